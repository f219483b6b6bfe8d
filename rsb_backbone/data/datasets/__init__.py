"""The project's builtin data sets: the generated shapes demo (registered by :mod:`.builtin`)."""
