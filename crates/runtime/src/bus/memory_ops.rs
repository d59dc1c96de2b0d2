//! [`BusInspect`] on the in-process bus: what `mesh events` shows of `mesh serve all` through
//! the admin port. Dead letters are numbered across groups (their `dead_id`); entry ids are the
//! streams' counters.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{MemoryBus, append, lag};
use crate::bus::inspect::{BusInspect, Entry, ReadFrom, StreamInfo};
use crate::bus::{BusError, DeadLetter};

impl BusInspect for MemoryBus {
    fn streams(&self) -> BoxFuture<'_, Result<Vec<StreamInfo>, BusError>> {
        Box::pin(async move {
            let now = Instant::now();
            let state = self.lock();
            let mut out: Vec<StreamInfo> = state
                .streams
                .iter()
                .map(|(domain, stream)| {
                    let mut groups: Vec<&String> = stream.groups.keys().collect();
                    groups.sort();
                    StreamInfo {
                        domain: domain.clone(),
                        length: stream.entries.len() as u64,
                        groups: groups
                            .into_iter()
                            .map(|g| lag(Some(stream), domain, g, now))
                            .collect(),
                    }
                })
                .collect();
            out.sort_by(|a, b| a.domain.cmp(&b.domain));
            Ok(out)
        })
    }

    fn dead_letter_entries<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, DeadLetter)>, BusError>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .dead
                .get(group)
                .map(|letters| {
                    letters
                        .iter()
                        .map(|(id, d)| (id.to_string(), d.clone()))
                        .collect()
                })
                .unwrap_or_default())
        })
    }

    fn replay_dead_letter<'a>(
        &'a self,
        group: &'a str,
        dead_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, BusError>> {
        Box::pin(async move {
            let Ok(wanted) = dead_id.parse::<u64>() else {
                return Ok(false);
            };
            {
                let mut state = self.lock();
                let Some(letters) = state.dead.get_mut(group) else {
                    return Ok(false);
                };
                let Some(i) = letters.iter().position(|(id, _)| *id == wanted) else {
                    return Ok(false);
                };
                let (_, letter) = letters.remove(i);
                let stream = state.streams.entry(letter.domain).or_default();
                append(
                    stream,
                    letter.payload,
                    Instant::now(),
                    self.shared.options.retention,
                );
            }
            self.shared.published.notify_waiters();
            Ok(true)
        })
    }

    fn read_stream<'a>(
        &'a self,
        domain: &'a str,
        from: &'a ReadFrom,
        count: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Entry>, BusError>> {
        Box::pin(async move {
            let deadline = Instant::now() + wait;
            // The first id wanted: `New` is fixed at the call, so entries added while waiting
            // are found.
            let first = match from {
                ReadFrom::Start => 0,
                ReadFrom::New => self.lock().streams.get(domain).map_or(0, |s| s.next_id),
                ReadFrom::After(id) => match id.parse::<u64>() {
                    Ok(id) => id + 1,
                    // Not an id of this bus: nothing is after it.
                    Err(_) => u64::MAX,
                },
            };
            loop {
                let published = self.shared.published.notified();
                tokio::pin!(published);
                published.as_mut().enable();
                let found: Vec<Entry> =
                    self.lock().streams.get(domain).map_or_else(Vec::new, |s| {
                        s.entries
                            .iter()
                            .filter(|(id, ..)| *id >= first)
                            .take(count.max(1))
                            .map(|(id, payload, _)| (id.to_string(), payload.clone()))
                            .collect()
                    });
                if !found.is_empty() || Instant::now() >= deadline {
                    return Ok(found);
                }
                tokio::select! {
                    () = &mut published => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{DeliveryOptions, EventBus, OutgoingEvent};

    fn event(n: u8) -> OutgoingEvent {
        OutgoingEvent {
            domain: "order".into(),
            event_id: n.to_string(),
            payload: bytes::Bytes::from(vec![n]),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_letter_is_listed_with_its_id_and_replayed_once_to_its_stream() {
        let bus = MemoryBus::new(DeliveryOptions::default());
        let domains = vec!["order".to_string()];
        let mut sub = bus.subscribe("billing", "b1", &domains).await.unwrap();
        bus.publish(&[event(1), event(2)]).await.unwrap();
        let got = sub.next_batch(10, Duration::ZERO).await.unwrap();
        sub.ack(&got[0]).await.unwrap();
        sub.dead_letter(&got[1], "no price list").await.unwrap();

        let streams = bus.streams().await.unwrap();
        assert_eq!(streams.len(), 1);
        assert_eq!(
            (streams[0].domain.as_str(), streams[0].length),
            ("order", 2)
        );
        assert_eq!(streams[0].groups[0].group, "billing");
        assert_eq!(
            streams[0].groups[0].behind(),
            0,
            "dead-lettered = acknowledged"
        );

        let dead = bus.dead_letter_entries("billing").await.unwrap();
        assert_eq!(dead.len(), 1);
        let (dead_id, letter) = &dead[0];
        assert_eq!(
            (letter.reason.as_str(), letter.payload[0]),
            ("no price list", 2)
        );
        assert!(!bus.replay_dead_letter("billing", "99").await.unwrap());
        assert!(!bus.replay_dead_letter("other", dead_id).await.unwrap());
        assert!(bus.replay_dead_letter("billing", dead_id).await.unwrap());
        assert!(
            !bus.replay_dead_letter("billing", dead_id).await.unwrap(),
            "once"
        );
        assert!(bus.dead_letter_entries("billing").await.unwrap().is_empty());

        let again = sub.next_batch(10, Duration::ZERO).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(
            (again[0].payload[0], again[0].attempt),
            (2, 1),
            "a new entry"
        );
        let all = bus
            .read_stream("order", &ReadFrom::Start, 10, Duration::ZERO)
            .await
            .unwrap();
        let payloads: Vec<u8> = all.iter().map(|(_, p)| p[0]).collect();
        assert_eq!(payloads, [1, 2, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn reading_new_entries_waits_for_the_next_publish_or_the_wait() {
        let bus = MemoryBus::new(DeliveryOptions::default());
        bus.publish(&[event(1)]).await.unwrap();
        let start = Instant::now();
        let none = bus
            .read_stream("order", &ReadFrom::New, 10, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(none.is_empty());
        assert_eq!(start.elapsed(), Duration::from_secs(2));

        let reader = bus.clone();
        let waiting = tokio::spawn(async move {
            reader
                .read_stream("order", &ReadFrom::New, 10, Duration::from_secs(60))
                .await
                .unwrap()
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        bus.publish(&[event(2), event(3)]).await.unwrap();
        let got = waiting.await.unwrap();
        let payloads: Vec<u8> = got.iter().map(|(_, p)| p[0]).collect();
        assert_eq!(payloads, [2, 3]);
        let after = bus
            .read_stream(
                "order",
                &ReadFrom::After(got[0].0.clone()),
                10,
                Duration::ZERO,
            )
            .await
            .unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].1[0], 3);
    }
}
