"""swarmbinder's Textual admin console (imported as ``swarmbinder_tui``)."""
