"""A plugin module whose own code fails on import (a missing setting, a bad dependency...)."""
raise RuntimeError("plugin settings not found")
