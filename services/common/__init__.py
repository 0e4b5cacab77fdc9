"""The one shared library of the flash-sale services: settings, resources, defaults, auth, streams."""
