"""Pure-torch reference implementations, written straight from the formulas.

They run in any dtype (float64 is what the tests compare against) and double
as the ``torch`` backend.
"""
