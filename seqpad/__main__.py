"""``python -m seqpad`` runs the command-line interface."""

from seqpad.cli import main

if __name__ == "__main__":
    main()
