"""`python -m safebasin`: the CLI (reproducible mode re-executes itself this way)."""

from .cli import main

if __name__ == "__main__":
    main()
