"""DRRN super-resolution service: command line and shared project paths."""
