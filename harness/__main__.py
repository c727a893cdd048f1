"""`python -m harness ...`, and so `torchrun --nproc-per-node N -m harness train ...`: the CLI."""
from harness.cli import main

if __name__ == "__main__":
    main()
