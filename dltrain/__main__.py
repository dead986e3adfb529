"""`python -m dltrain`: the `dltrain` command (a Ctrl-C while it starts is one line, exit 130)."""

from dltrain.cli import main

if __name__ == "__main__":
    main()
