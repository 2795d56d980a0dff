"""The shipped configs: read them with importlib.resources.files("minigpt.configs"), from a checkout or an install."""
