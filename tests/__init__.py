"""imgpipe's tests, one folder a package (tests/steps/, tests/data/, ...)."""

import os

# The checkout the tests run in.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
