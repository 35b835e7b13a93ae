raise RuntimeError("this candidate is broken at import")
