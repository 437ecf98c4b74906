"""`python -m caffelike ...` is the `caffelike` command (what torchrun and a venv without its scripts call)."""
import sys

from caffelike.cli import main

sys.exit(main())
