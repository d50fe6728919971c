//! `immediate_hours` windows such as `"09:00-19:00"` (end exclusive; a window may wrap past midnight), parsed
//! when the configuration is loaded: a window that does not parse is refused there, naming the key, and never
//! reaches a request. Policy (`policy::access`) decides with them whether a request may run immediately.

use super::values::written_as_given;

/// A daily window in local time, as minutes after midnight; `end < start` wraps past midnight. Shown and
/// written back as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourWindow {
    start: u16,
    end: u16,
    text: String,
}

impl HourWindow {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a window such as \"09:00-19:00\"");
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let minutes = |s: &str| -> Option<u16> {
            let (h, m) = s.trim().split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            // 24:00 is allowed as an end ("18:00-24:00").
            (h < 24 && m < 60 || h == 24 && m == 0).then_some(h * 60 + m)
        };
        let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start == end || start == 24 * 60 {
            return Err(format!("{text:?} is empty: start and end must differ"));
        }
        Ok(Self {
            start,
            end,
            text: text.to_owned(),
        })
    }

    /// The window as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `minute_of_day` (0..1440) lies inside the window.
    pub fn contains(&self, minute_of_day: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute_of_day)
        } else {
            minute_of_day >= self.start || minute_of_day < self.end
        }
    }
}

written_as_given!(HourWindow);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_window_contains_its_start_but_not_its_end() {
        let w = HourWindow::parse("09:00-19:00").unwrap();
        assert!(w.contains(9 * 60));
        assert!(w.contains(19 * 60 - 1));
        assert!(!w.contains(19 * 60));
        assert!(!w.contains(8 * 60 + 59));
    }

    #[test]
    fn a_night_window_wraps_past_midnight() {
        let w = HourWindow::parse("22:00-06:00").unwrap();
        assert!(w.contains(23 * 60));
        assert!(w.contains(0));
        assert!(!w.contains(12 * 60));
    }

    #[test]
    fn bad_windows_are_refused() {
        for bad in [
            "9-17",
            "09:00",
            "25:00-26:00",
            "09:00-09:00",
            "09:60-10:00",
            "x",
        ] {
            assert!(HourWindow::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            HourWindow::parse("18:00-24:00").unwrap().to_string(),
            "18:00-24:00"
        );
    }

    #[test]
    fn a_window_is_parsed_when_read_and_written_back_as_configured() {
        use serde::{Deserialize, Serialize};

        #[derive(Debug, Deserialize, Serialize)]
        struct Hours {
            immediate_hours: Vec<HourWindow>,
        }
        let h: Hours =
            toml::from_str("immediate_hours = [\"09:00 - 19:00\", \"22:00-06:00\"]").unwrap();
        assert!(h.immediate_hours[0].contains(9 * 60));
        assert_eq!(h.immediate_hours[0].to_string(), "09:00 - 19:00");
        assert_eq!(
            toml::to_string(&h).unwrap().trim(),
            "immediate_hours = [\"09:00 - 19:00\", \"22:00-06:00\"]"
        );
        let e = toml::from_str::<Hours>("immediate_hours = [\"9-17\"]").unwrap_err();
        assert_eq!(
            e.message(),
            "\"9-17\" is not a window such as \"09:00-19:00\""
        );
    }
}
