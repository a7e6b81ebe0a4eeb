//! The receiver's side of the store seam (filled in by the receiver split).
