//! SLA classes: how urgent a delivery is. The context of a delivery
//! carries its class; the SLA monitor keeps a budget and histograms per
//! class.

/// How urgent a delivery is; each class has its own p99 budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlaClass {
    /// The most urgent (default budget 200 ms).
    P0,
    /// Default budget 800 ms.
    #[default]
    P1,
    /// Background work (default budget 2 s).
    P2,
}

impl SlaClass {
    /// Every class, in index order.
    pub const ALL: [SlaClass; 3] = [SlaClass::P0, SlaClass::P1, SlaClass::P2];

    /// Position in per-class arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// `"P0"`, `"P1"` or `"P2"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SlaClass::P0 => "P0",
            SlaClass::P1 => "P1",
            SlaClass::P2 => "P2",
        }
    }
}
