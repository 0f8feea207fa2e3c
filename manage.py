#!/usr/bin/env python
import importlib
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sdsaas.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        importlib.import_module(os.environ["DJANGO_SETTINGS_MODULE"])
    except ImproperlyConfigured as exc:
        # Django would carry on without settings and drop the project's commands ("Unknown
        # command", a `help` without them); say instead what is missing, and where to set it.
        sys.stderr.write(
            f"manage.py: the settings cannot load: {exc}. See README.md, Configuration "
            "(for the local stack: make manage ARGS='...').\n"
        )
        sys.exit(2)
    execute_from_command_line(sys.argv)
