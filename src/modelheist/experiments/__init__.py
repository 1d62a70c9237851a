"""The experimenter's side: measurements, the quickstart and reports."""
