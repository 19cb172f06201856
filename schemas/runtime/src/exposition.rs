//! Reading Prometheus's text exposition format: what every Rainbow `/metrics` serves (see
//! [`crate::serve`]), read back by `rainbow status` and by the tests.
//!
//! Contract: [`Exposition::parse`] never fails. It keeps every sample line it can read
//! (`name value [timestamp]` or `name{label="value",...} value [timestamp]`, label values with the
//! `\\`, `\"` and `\n` escapes, values such as `NaN` and `+Inf`), skips comments (`# HELP`,
//! `# TYPE`) and blank lines, and counts the lines it could not read in
//! [`Exposition::malformed`] instead of guessing. Lookups answer `None` when no series of the
//! metric is present, never 0: "not exported" and "zero" stay apart. Histograms are read from
//! their cumulative `_bucket{le=..}`, `_count` and `_sum` series, summed over every other label,
//! and their quantiles are interpolated within a bucket as PromQL's `histogram_quantile` does.

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order of the line.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of one label.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The samples of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Lines that were neither a sample, a comment nor blank.
    pub malformed: usize,
}

impl Exposition {
    /// Reads a text exposition (see the module's contract).
    pub fn parse(text: &str) -> Exposition {
        let mut out = Exposition::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_sample(line) {
                Some(sample) => out.samples.push(sample),
                None => out.malformed += 1,
            }
        }
        out
    }

    /// Every series of the metric `name` (exactly that name: `x` does not match `x_total`).
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Whether any series' name starts with `prefix` (e.g. `rainbow_processor_`).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.samples.iter().any(|s| s.name.starts_with(prefix))
    }

    /// The value of the first series of `name` carrying every label of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name).find(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v))).map(|s| s.value)
    }

    /// The sum over every series of `name`; `None` when it has none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        self.series(name).map(|s| s.value).reduce(|a, b| a + b)
    }

    /// The largest value over every series of `name`; `None` when it has none.
    pub fn max(&self, name: &str) -> Option<f64> {
        self.series(name).map(|s| s.value).reduce(f64::max)
    }

    /// The histogram `name` (its `name_bucket`, `name_count` and `name_sum` series), summed over
    /// every label but `le`; `None` when it has no bucket.
    pub fn histogram(&self, name: &str) -> Option<Histogram> {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for s in self.series(&bucket) {
            let Some(le) = s.label("le").and_then(parse_value) else { continue };
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, count)) => *count += s.value,
                None => buckets.push((le, s.value)),
            }
        }
        if buckets.is_empty() {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let count = self
            .sum(&format!("{name}_count"))
            .or_else(|| buckets.iter().find(|(le, _)| le.is_infinite()).map(|(_, c)| *c))
            .unwrap_or_else(|| buckets.last().map_or(0.0, |(_, c)| *c));
        Some(Histogram { buckets, count, sum: self.sum(&format!("{name}_sum")).unwrap_or(0.0) })
    }
}

/// A histogram's cumulative buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// `(upper bound, observations <= it)`, by bound; the last is `+Inf` when exported.
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

impl Histogram {
    /// The `q` quantile (0..=1), interpolated linearly within its bucket; the largest finite
    /// bound when it falls in the `+Inf` bucket; `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * self.count;
        let mut lower = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank && cumulative > 0.0 {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = cumulative - lower.1;
                let start = if lower.0 == 0.0 && le <= 0.0 { le } else { lower.0 };
                return Some(if in_bucket > 0.0 {
                    start + (le - start) * ((rank - lower.1) / in_bucket)
                } else {
                    le
                });
            }
            lower = (le, cumulative);
        }
        self.buckets.iter().rev().find(|(le, _)| le.is_finite()).map(|(le, _)| *le)
    }

    /// The mean of the observations.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

/// `NaN`, `+Inf`, `-Inf` as Prometheus writes them, or a float.
fn parse_value(raw: &str) -> Option<f64> {
    match raw {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_sample(line: &str) -> Option<Sample> {
    let end = line.char_indices().find(|&(i, c)| !is_name_char(c, i == 0)).map_or(line.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let name = line[..end].to_string();
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = parse_labels(after)?;
        labels = parsed;
        rest = remaining;
    }
    // At least one blank between the series and its value; an optional timestamp after it.
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next()?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample { name, labels, value })
}

/// The labels after `{` up to the closing `}`, and what follows it.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let end = s.char_indices().find(|&(i, c)| !is_name_char(c, i == 0) || c == ':').map(|(i, _)| i)?;
        if end == 0 {
            return None;
        }
        let key = s[..end].to_string();
        s = s[end..].trim_start().strip_prefix('=')?.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        s = s[close + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP rainbow_processor_consumer_lag_messages High watermark minus the next offset
# TYPE rainbow_processor_consumer_lag_messages gauge
rainbow_processor_consumer_lag_messages{partition="0",topic="cdc.public.orders"} 12
rainbow_processor_consumer_lag_messages{partition="1",topic="cdc.public.orders"} 30

rainbow_processor_watermark_delay_seconds 0.75
rainbow_processor_freshness_seconds_bucket{le="0.1"} 10
rainbow_processor_freshness_seconds_bucket{le="0.5"} 50
rainbow_processor_freshness_seconds_bucket{le="1"} 90
rainbow_processor_freshness_seconds_bucket{le="+Inf"} 100
rainbow_processor_freshness_seconds_sum 42.5
rainbow_processor_freshness_seconds_count 100
odd{path="C:\\dir",say="a \"quote\"\nnext", x = "1" ,} NaN 1700000000000
not a sample line
rainbow_up_running{component="api"} 1
rainbow_up_running{component="cdc"} 0
"#;

    #[test]
    fn reads_samples_labels_escapes_and_special_values() {
        let e = Exposition::parse(TEXT);
        assert_eq!(e.malformed, 1, "{e:?}");
        assert_eq!(e.sum("rainbow_processor_consumer_lag_messages"), Some(42.0));
        assert_eq!(e.max("rainbow_processor_consumer_lag_messages"), Some(30.0));
        assert_eq!(e.value("rainbow_processor_consumer_lag_messages", &[("partition", "1")]), Some(30.0));
        assert_eq!(e.value("rainbow_processor_watermark_delay_seconds", &[]), Some(0.75));
        assert_eq!(e.value("rainbow_up_running", &[("component", "cdc")]), Some(0.0));
        assert_eq!(e.sum("rainbow_processor_watermark_delay"), None, "exact names only");
        assert_eq!(e.sum("absent"), None);
        let odd = e.series("odd").next().unwrap();
        assert_eq!(odd.label("path"), Some("C:\\dir"));
        assert_eq!(odd.label("say"), Some("a \"quote\"\nnext"));
        assert_eq!(odd.label("x"), Some("1"));
        assert!(odd.value.is_nan());
        assert!(e.has_prefix("rainbow_up_") && !e.has_prefix("rainbow_cdc_"));
    }

    #[test]
    fn rejects_what_is_not_a_sample() {
        for bad in ["x", "x{a=\"1\"}", "x{a=1} 2", "x{a=\"1\" 2", "1x 2", "x 2 3 4", "x two", "x{a=\"1\"}3"] {
            assert_eq!(parse_sample(bad), None, "{bad}");
        }
        assert_eq!(parse_sample("x{} 2").map(|s| s.value), Some(2.0));
        assert_eq!(parse_sample("x -Inf").map(|s| s.value), Some(f64::NEG_INFINITY));
    }

    #[test]
    fn histogram_quantiles_interpolate_within_buckets() {
        let h = Exposition::parse(TEXT).histogram("rainbow_processor_freshness_seconds").unwrap();
        assert_eq!(h.count, 100.0);
        assert_eq!(h.mean(), Some(0.425));
        // The median: 40 of the 40 observations between 0.1 and 0.5 -> 0.1 + 0.4 * 40/40.
        assert!((h.quantile(0.5).unwrap() - 0.5).abs() < 1e-9);
        assert!((h.quantile(0.3).unwrap() - 0.3).abs() < 1e-9);
        assert!((h.quantile(0.05).unwrap() - 0.05).abs() < 1e-9, "first bucket from 0");
        // p99 falls in +Inf: the largest finite bound.
        assert_eq!(h.quantile(0.99), Some(1.0));
        let empty = Exposition::parse("h_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_count 0\n");
        assert_eq!(empty.histogram("h").unwrap().quantile(0.5), None);
        assert_eq!(empty.histogram("nothing"), None);
    }

    #[test]
    fn histograms_sum_over_other_labels() {
        let text = "h_bucket{route=\"a\",le=\"1\"} 1\nh_bucket{route=\"b\",le=\"1\"} 3\n\
                    h_bucket{route=\"a\",le=\"+Inf\"} 2\nh_bucket{route=\"b\",le=\"+Inf\"} 4\n\
                    h_count{route=\"a\"} 2\nh_count{route=\"b\"} 4\n";
        let h = Exposition::parse(text).histogram("h").unwrap();
        assert_eq!(h.buckets, vec![(1.0, 4.0), (f64::INFINITY, 6.0)]);
        assert_eq!(h.count, 6.0);
        assert_eq!(h.quantile(0.5), Some(0.75));
    }
}
