//! "Did you mean": the closest name by edit distance, for missing columns.

/// The candidate closest to `name` (case-insensitive Levenshtein), if it is
/// close enough to be a plausible rename or typo.
pub fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let target = name.to_ascii_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let d = distance(&target, &c.to_ascii_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    // Accept up to a third of the longer name changed, at least 2 edits; a
    // shared prefix or suffix of 3+ characters (user_id → user_uuid) also counts.
    best.filter(|(d, c)| {
        let len = target.chars().count().max(c.chars().count());
        let shares = |n: usize| {
            let (a, b) = (target.as_str(), c.to_ascii_lowercase());
            (a.len() >= n && b.len() >= n) && (a[..n] == b[..n] || a[a.len() - n..] == b[b.len() - n..])
        };
        *d <= (len / 3).max(2) || (target.is_ascii() && c.is_ascii() && shares(3.min(target.len())) && *d <= len / 2 + 1)
    })
    .map(|(_, c)| c)
}

/// Levenshtein distance over characters.
pub fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_renames_and_typos_not_noise() {
        let cols = ["event_id", "event_name", "event_ts", "user_id", "plan"];
        assert_eq!(closest("evnt_ts", &cols), Some("event_ts"));
        // Edit distance alone: a rename to a name near another column suggests that column.
        assert_eq!(closest("event_time", &cols), Some("event_name"));
        assert_eq!(closest("usr_id", &cols), Some("user_id"));
        assert_eq!(closest("EVENT_NAME", &cols), Some("event_name"));
        assert_eq!(closest("zzzzzzzz", &cols), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
