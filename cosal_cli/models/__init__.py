"""Networks (torch modules) and the converters that turn published weight files into their state dicts."""
