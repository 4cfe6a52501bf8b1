"""``python -m halo.cli`` runs the ``halo`` command."""

from halo.cli.app import main

if __name__ == "__main__":
    raise SystemExit(main())
