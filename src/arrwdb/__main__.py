"""``python -m arrwdb``: the ``arrwdb`` command (``python -m arrwdb serve``)."""

from arrwdb.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
