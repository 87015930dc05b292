"""`python -m emotalk_fast ...` is `emotalk-fast ...`."""
import sys

from .cli import main

sys.exit(main())
