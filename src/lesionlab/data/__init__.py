"""Data flow: sources -> prepared store -> fixed split -> training draws."""
