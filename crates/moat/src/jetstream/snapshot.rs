//! PostgreSQL snapshots (`pg_snapshot` as text: `xmin:xmax:xip,...`) read in Rust, so that a
//! subscriber can tell from a JetStream message's headers whether its cursor already covers the
//! event, without asking the publisher's database.

use std::collections::BTreeSet;

/// A parsed `pg_snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: BTreeSet<u64>,
}

impl Snapshot {
    /// Parses `xmin:xmax:xip1,xip2`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => BTreeSet::new(),
            list => list.split(',').map(|x| x.parse().ok()).collect::<Option<_>>()?,
        };
        (xmin <= xmax).then_some(Self { xmin, xmax, xip })
    }

    /// Whether transaction `xid` had committed (or aborted) when the snapshot was taken, as
    /// `pg_visible_in_snapshot` answers.
    pub(crate) fn visible(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.xip.contains(&xid))
    }

    /// Whether every transaction visible in `other` is visible in `self`.
    pub(crate) fn covers(&self, other: &Snapshot) -> bool {
        other.xmax <= self.xmax && self.xip.iter().all(|x| *x >= other.xmax || other.xip.contains(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_and_cover_follow_postgres() {
        let s = Snapshot::parse("10:15:11,13").expect("parses");
        assert!(s.visible(9) && s.visible(10) && s.visible(12) && s.visible(14));
        assert!(!s.visible(11) && !s.visible(13) && !s.visible(15));
        let later = Snapshot::parse("13:20:13").expect("parses");
        assert!(later.covers(&s) && !s.covers(&later));
        // 11 is visible in `later` but not in `s`; 13 in neither: `later` still covers `s`.
        let odd = Snapshot::parse("12:16:13").expect("parses");
        assert!(odd.covers(&s));
        // Incomparable: each sees one the other does not.
        let a = Snapshot::parse("5:10:7").expect("parses");
        let b = Snapshot::parse("5:10:8").expect("parses");
        assert!(!a.covers(&b) && !b.covers(&a));
        assert!(Snapshot::parse("1:1:").expect("parses").visible(0));
        assert_eq!(Snapshot::parse("x"), None);
    }
}
