#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys

DATABASE_FREE_COMMANDS = {"runworker", "comfyui_simulator"}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "t2i_project.settings")
    if len(sys.argv) > 1 and sys.argv[1] in DATABASE_FREE_COMMANDS:
        # The worker daemon and the simulator sign nothing and open no database: no SECRET_KEY needed.
        os.environ.setdefault("T2I_STANDALONE_COMMAND", "1")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
