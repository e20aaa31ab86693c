//! The caps on open connections of one listener: in total and per remote
//! address, taken at accept ([`Caps::admit`]) and, for requests a trusted
//! proxy forwards, per client address ([`Caps::forwarded`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::Serving;
use crate::gateway::client_ip::{TrustedProxies, client_ip};
use crate::metrics::{ListenerLabels, METRICS};

/// The open connections of one listener, in total and per address.
pub(super) struct Caps {
    name: &'static str,
    max_total: usize,
    max_per_address: usize,
    trusted_proxies: TrustedProxies,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    /// Only addresses with a connection open: bounded by `max_total`.
    per_address: HashMap<IpAddr, usize>,
}

/// One connection's place under the caps, given back when it is dropped (with
/// the socket).
pub(super) struct Slot {
    caps: Arc<Caps>,
    /// The address it counts against; `None` for a trusted proxy.
    address: Option<IpAddr>,
    /// A connection (counts toward the total), or a request that came through
    /// a trusted proxy (counts only against its client's address).
    connection: bool,
}

impl Caps {
    pub(super) fn new(serving: &Serving) -> Self {
        Self {
            name: serving.name,
            max_total: serving.http.max_connections,
            max_per_address: serving.http.max_connections_per_address,
            trusted_proxies: serving.trusted_proxies.clone(),
            open: Mutex::default(),
        }
    }

    /// A slot for a connection from `ip`, or why there is none.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let ip = ip.to_canonical();
        // A proxy speaks for many clients: they are counted by their forwarded
        // address, request by request ([`Caps::admit_forwarded`]).
        let address = (!self.trusted_proxies.trusts(ip)).then_some(ip);
        // A std mutex: held for a map update, never across an await.
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_total {
            return Err("total");
        }
        if let Some(ip) = address {
            let count = open.per_address.entry(ip).or_default();
            if *count >= self.max_per_address {
                return Err("per_address");
            }
            *count += 1;
        }
        open.total += 1;
        self.gauge().inc();
        Ok(Slot {
            caps: self.clone(),
            address,
            connection: true,
        })
    }

    /// A place for a request that a trusted proxy forwarded for `client`, under
    /// the per-address cap only (the proxy's connection holds one of the total).
    fn admit_forwarded(self: &Arc<Self>, client: IpAddr) -> Result<Slot, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.per_address.entry(client).or_default();
        if *count >= self.max_per_address {
            return Err("per_address");
        }
        *count += 1;
        Ok(Slot {
            caps: self.clone(),
            address: Some(client),
            connection: false,
        })
    }

    /// The slot a request from `peer` takes under the per-address cap when a
    /// trusted proxy forwarded it; `Ok(None)` for any other request (its
    /// connection's slot covers it).
    pub(super) fn forwarded(
        self: &Arc<Self>,
        peer: IpAddr,
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<Slot>, &'static str> {
        let peer = peer.to_canonical();
        if !self.trusted_proxies.trusts(peer) {
            return Ok(None);
        }
        let client = client_ip(peer, headers, &self.trusted_proxies);
        if self.trusted_proxies.trusts(client) {
            return Ok(None);
        }
        self.admit_forwarded(client).map(Some)
    }

    fn gauge(&self) -> prometheus_client::metrics::gauge::Gauge {
        METRICS
            .http
            .connections
            .get_or_create(&ListenerLabels {
                listener: self.name,
            })
            .clone()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.connection {
            open.total -= 1;
        }
        if let Some(ip) = self.address
            && let Some(count) = open.per_address.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                open.per_address.remove(&ip);
            }
        }
        drop(open);
        if self.connection {
            self.caps.gauge().dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::listener::HttpConfig;
    use std::time::Duration;

    fn caps(total: usize, per_address: usize, proxies: &[&str]) -> Arc<Caps> {
        Arc::new(Caps::new(&Serving {
            name: "test",
            http: HttpConfig {
                max_connections: total,
                max_connections_per_address: per_address,
                ..HttpConfig::default()
            },
            trusted_proxies: TrustedProxies::parse(proxies).unwrap(),
            nodelay: false,
            grace: Duration::from_secs(1),
        }))
    }

    #[test]
    fn caps_count_per_address_and_in_total_and_give_back_on_drop() {
        let caps = caps(3, 2, &["10.0.0.1"]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).err(), Some("per_address"));
        drop(a1);
        let _a3 = caps.admit(a).unwrap();
        let b1 = caps.admit(b).unwrap();
        assert_eq!(caps.admit(proxy).err(), Some("total"));
        drop(b1);
        // A trusted proxy is held only by the total.
        let _p1 = caps.admit(proxy).unwrap();
        assert_eq!(caps.open.lock().unwrap().per_address.len(), 1);

        // Through the proxy, a client is counted by its forwarded address, with
        // its direct connections, but not toward the total (the proxy's
        // connection is).
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", "192.0.2.9".parse().unwrap());
        let c1 = caps.forwarded(proxy, &headers).unwrap();
        let _c2 = caps.forwarded(proxy, &headers).unwrap();
        assert!(c1.is_some());
        assert_eq!(caps.forwarded(proxy, &headers).err(), Some("per_address"));
        drop(c1);
        assert!(caps.forwarded(proxy, &headers).unwrap().is_some());
        headers.insert("x-forwarded-for", "192.0.2.1".parse().unwrap());
        assert_eq!(caps.forwarded(proxy, &headers).err(), Some("per_address"));
        // Not from a proxy: the connection's own slot covers the request.
        assert!(caps.forwarded(b, &headers).unwrap().is_none());
        assert_eq!(caps.open.lock().unwrap().total, 3);
    }
}
