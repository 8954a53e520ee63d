"""`python -m proqha` runs the command-line app (also under torchrun)."""

from proqha.cli.app import main

if __name__ == "__main__":
    main()
