"""Methods defined outside fedcore, for tests/test_plugins.py: reached only through the plugin routes
(an entry point or 'module:Class'), never registered in fedcore.methods.METHODS."""
