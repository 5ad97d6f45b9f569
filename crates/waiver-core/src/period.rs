//! A fixed length of time written as an ISO 8601 duration (`P14D`, `PT8H`, `P1DT12H`).
//!
//! Days are 24 hours: governance periods are measured in UTC, where a day never has 23 or
//! 25 hours. Years and months are refused because they have no fixed length.

use std::{fmt, str::FromStr};

use jiff::{SignedDuration, Span, SpanRelativeTo};

/// A positive, fixed-length period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period(SignedDuration);

/// Why a string is not a period.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a period: {why}")]
pub struct PeriodError {
    input: String,
    why: &'static str,
}

impl Period {
    pub const fn from_secs(secs: i64) -> Self {
        Self(SignedDuration::from_secs(secs))
    }

    pub const fn from_hours(hours: i64) -> Self {
        Self(SignedDuration::from_hours(hours))
    }

    pub const fn from_days(days: i64) -> Self {
        Self(SignedDuration::from_hours(days * 24))
    }

    pub const fn duration(self) -> SignedDuration {
        self.0
    }
}

impl FromStr for Period {
    type Err = PeriodError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| PeriodError { input: crate::id::clip(s), why };
        if !s.starts_with('P') {
            return Err(err("write an ISO 8601 duration such as `P14D` or `PT8H`"));
        }
        let span: Span = s.parse().map_err(|_| err("write an ISO 8601 duration such as `P14D` or `PT8H`"))?;
        if span.get_years() != 0 || span.get_months() != 0 || span.get_weeks() != 0 {
            return Err(err("use days (`D`) and smaller units; years, months and weeks have no fixed length here"));
        }
        let duration = span.to_duration(SpanRelativeTo::days_are_24_hours()).map_err(|_| err("it is out of range"))?;
        if !duration.is_positive() {
            return Err(err("it must be longer than zero"));
        }
        Ok(Self(duration))
    }
}

/// Written back in the largest exact units: `P14D`, `PT8H`, `P1DT12H`, `PT90S`.
impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let (days, rest) = (secs / 86_400, secs % 86_400);
        let (hours, rest) = (rest / 3600, rest % 3600);
        let (minutes, seconds) = (rest / 60, rest % 60);
        f.write_str("P")?;
        if days > 0 {
            write!(f, "{days}D")?;
        }
        if hours + minutes + seconds > 0 || days == 0 {
            f.write_str("T")?;
            if hours > 0 {
                write!(f, "{hours}H")?;
            }
            if minutes > 0 {
                write!(f, "{minutes}M")?;
            }
            if seconds > 0 || hours + minutes == 0 {
                write!(f, "{seconds}S")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_fixed_periods() {
        for (input, printed) in [
            ("P14D", "P14D"),
            ("PT8H", "PT8H"),
            ("P1DT12H", "P1DT12H"),
            ("PT90M", "PT1H30M"),
            ("PT30S", "PT30S"),
            ("P2D", "P2D"),
        ] {
            let period: Period = input.parse().unwrap();
            assert_eq!(period.to_string(), printed, "{input}");
            assert_eq!(printed.parse::<Period>().unwrap(), period);
        }
        assert_eq!("P1D".parse::<Period>().unwrap(), Period::from_hours(24));
    }

    #[test]
    fn refuses_calendar_units_zero_and_junk() {
        for bad in ["P1M", "P1Y", "P2W", "PT0S", "-P1D", "14 days", "", "P", "P99999999999D"] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
        let err = "P1M".parse::<Period>().unwrap_err();
        assert!(err.to_string().contains("no fixed length"), "{err}");
    }
}
