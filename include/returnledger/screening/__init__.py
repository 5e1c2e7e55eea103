"""Screening: the field rules, the validation frame and the GX events suite, behind one entry (validate)."""
