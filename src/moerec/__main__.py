"""``python -m moerec`` (and ``torchrun -m moerec``) run the command line."""

from moerec.cli import main

if __name__ == "__main__":
    main()
