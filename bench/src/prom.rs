//! Prometheus text exposition, read just enough to sum counters by label and diff snapshots.

use std::collections::BTreeMap;

/// One scrape: every sample, keyed by metric name and its labels as written.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    /// Sum of the samples of `name` whose labels satisfy `keep`.
    pub fn sum(&self, name: &str, keep: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && keep(&s.labels))
            .map(|s| s.value)
            .sum()
    }

    /// `after - before` per label set of `name`, for the samples `keep` selects; zero
    /// differences left out. The key is the chosen labels joined with spaces.
    pub fn diff_by(
        before: &Scrape,
        after: &Scrape,
        name: &str,
        key_labels: &[&str],
        keep: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> BTreeMap<String, f64> {
        let key = |s: &Sample| {
            key_labels
                .iter()
                .map(|l| s.labels.get(*l).cloned().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut out: BTreeMap<String, f64> = BTreeMap::new();
        for s in after
            .samples
            .iter()
            .filter(|s| s.name == name && keep(&s.labels))
        {
            *out.entry(key(s)).or_default() += s.value;
        }
        for s in before
            .samples
            .iter()
            .filter(|s| s.name == name && keep(&s.labels))
        {
            *out.entry(key(s)).or_default() -= s.value;
        }
        out.retain(|_, v| v.abs() > 1e-9);
        out
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)),
        None => (head, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `a="x",b="y"`; values here never contain `",`.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_diffs_counters_by_label() {
        let before = Scrape::parse(
            "# TYPE x counter\nx_total{method=\"GET\",uri=\"/a\"} 2.0\n\
             x_total{method=\"PUT\",uri=\"/a\"} 1\n",
        );
        let after = Scrape::parse(
            "x_total{method=\"GET\",uri=\"/a\"} 5.0\nx_total{method=\"PUT\",uri=\"/a\"} 1\n",
        );

        let diff = Scrape::diff_by(&before, &after, "x_total", &["method"], |_| true);

        assert_eq!(after.sum("x_total", |l| l["method"] == "GET"), 5.0);
        assert_eq!(diff.len(), 1);
        assert_eq!(diff["GET"], 3.0);
    }
}
