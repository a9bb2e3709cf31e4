"""Date formats (settings.FORMAT_MODULE_PATH): the console's timestamps show seconds."""
