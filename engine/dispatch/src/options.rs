//! What a producer asks of every delivery of its event, carried in the
//! event's headers ([`delivery_headers`]): a deadline and an SLA class.
//!
//! They are plain user headers, so a producer that does not link this
//! crate (the native client, `sluice publish --header`) sets them by name,
//! and every listener reads them the same way: a durable subscription, a
//! local topic fed by [`crate::Dispatcher::publish_encoded`].
//!
//! The deadline is absolute wall-clock time (Unix milliseconds), because it
//! crosses processes: a listener whose clock runs ahead of the producer's
//! times a delivery out early by that much. A value that does not parse is
//! refused, never ignored: the producer asked for a bound the listener
//! cannot honour.

use bytes::Bytes;
use sluice_model::event::Headers;
pub use sluice_model::names::delivery_headers;

use super::class::SlaClass;

/// A delivery header that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// `sluice-deadline-ms` is not decimal Unix milliseconds.
    #[error("header {name} is {value:?}, not Unix milliseconds as decimal text: fix the producer")]
    Deadline {
        /// The header's name.
        name: &'static str,
        /// Its value, lossily as text.
        value: String,
    },
    /// `sluice-sla-class` is not `P0`, `P1` or `P2`.
    #[error("header {name} is {value:?}, not P0, P1 or P2: fix the producer")]
    Class {
        /// The header's name.
        name: &'static str,
        /// Its value, lossily as text.
        value: String,
    },
}

/// The delivery headers of one event; `None`: not set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventOptions {
    /// When every delivery times out, Unix milliseconds.
    pub deadline_ms: Option<u64>,
    /// The SLA class of every delivery.
    pub class: Option<SlaClass>,
}

impl EventOptions {
    /// Reads the delivery headers among `user` (the last one of a name
    /// wins, as a later header overrides an earlier one).
    pub fn from_user_headers<'a, V: AsRef<[u8]> + 'a>(
        user: impl IntoIterator<Item = (&'a str, V)>,
    ) -> Result<EventOptions, HeaderError> {
        let mut options = EventOptions::default();
        for (name, value) in user {
            let value = value.as_ref();
            if name == delivery_headers::DEADLINE_MS {
                options.deadline_ms = Some(parse_deadline(value)?);
            } else if name == delivery_headers::SLA_CLASS {
                options.class = Some(parse_class(value)?);
            }
        }
        Ok(options)
    }

    /// Reads the delivery headers of `headers`.
    pub fn from_headers(headers: &Headers) -> Result<EventOptions, HeaderError> {
        EventOptions::from_user_headers(headers.user.iter().map(|(n, v)| (n.as_str(), v)))
    }

    /// Writes the options set into `headers`, replacing any delivery
    /// header already there.
    pub fn write(&self, headers: &mut Headers) {
        if let Some(deadline_ms) = self.deadline_ms {
            set(
                headers,
                delivery_headers::DEADLINE_MS,
                deadline_ms.to_string(),
            );
        }
        if let Some(class) = self.class {
            set(
                headers,
                delivery_headers::SLA_CLASS,
                class.as_str().to_owned(),
            );
        }
    }
}

fn set(headers: &mut Headers, name: &str, value: String) {
    headers.user.retain(|(n, _)| n != name);
    headers.user.push((name.to_owned(), Bytes::from(value)));
}

fn parse_deadline(value: &[u8]) -> Result<u64, HeaderError> {
    let refuse = || HeaderError::Deadline {
        name: delivery_headers::DEADLINE_MS,
        value: String::from_utf8_lossy(value).into_owned(),
    };
    let text = std::str::from_utf8(value).map_err(|_not_utf8| refuse())?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    text.parse().map_err(|_overflow| refuse())
}

fn parse_class(value: &[u8]) -> Result<SlaClass, HeaderError> {
    SlaClass::ALL
        .into_iter()
        .find(|class| class.as_str().as_bytes() == value)
        .ok_or_else(|| HeaderError::Class {
            name: delivery_headers::SLA_CLASS,
            value: String::from_utf8_lossy(value).into_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_through_headers_and_bad_values_are_refused() {
        let mut headers = Headers::default();
        let options = EventOptions {
            deadline_ms: Some(1_700_000_000_123),
            class: Some(SlaClass::P0),
        };
        options.write(&mut headers);
        options.write(&mut headers);
        assert_eq!(headers.user.len(), 2, "written twice, kept once");
        assert_eq!(EventOptions::from_headers(&headers), Ok(options));
        assert_eq!(
            EventOptions::from_headers(&Headers::default()),
            Ok(EventOptions::default())
        );
        for bad in ["", "12a", "-5", "99999999999999999999999"] {
            let user = [(delivery_headers::DEADLINE_MS, bad.as_bytes())];
            let refused = EventOptions::from_user_headers(user);
            assert!(
                matches!(refused, Err(HeaderError::Deadline { .. })),
                "{bad:?}"
            );
        }
        let user = [(delivery_headers::SLA_CLASS, &b"p0"[..])];
        assert!(matches!(
            EventOptions::from_user_headers(user),
            Err(HeaderError::Class { .. })
        ));
    }
}
