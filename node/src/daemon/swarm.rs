//! Swarm events into core inputs: connections, messages, pubsub, identify, Kademlia, mDNS.

use super::*;

impl Daemon {
    pub(super) fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                // A relay only serves reservations once it knows an address it is reachable
                // at; with none configured, the addresses it listens on are the ones.
                let circuit = address.iter().any(|p| p == libp2p::multiaddr::Protocol::P2pCircuit);
                if self.cfg.relay_server && self.cfg.external_addresses.is_empty() && !circuit {
                    self.swarm.add_external_address(address.clone());
                }
                self.listen.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => self.listen.retain(|a| *a != address),
            SwarmEvent::ListenerClosed { listener_id, addresses, reason } => {
                tracing::warn!(?addresses, ?reason, "stopped listening");
                self.relay_listener_closed(listener_id);
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                let remote = endpoint.get_remote_address().clone();
                let relayed = endpoint.is_relayed();
                tracing::info!(peer = %peer_id, %remote, relayed, "connected");
                self.conns.entry(peer_id).or_default().insert(connection_id, (remote, relayed));
                if !relayed {
                    self.listen_through_relay(peer_id);
                    self.close_relayed(peer_id);
                }
                if num_established.get() > 1 {
                    return;
                }
                if self.parting.remove(&peer_id).is_some() {
                    tracing::info!(peer = %peer_id, "connected again within the grace; the session goes on");
                    return;
                }
                let Some(node) = net::node_of(&peer_id) else {
                    tracing::warn!(peer = %peer_id, "peer key is not ed25519; disconnecting");
                    self.disconnect(peer_id);
                    return;
                };
                let id = self.next_peer;
                self.next_peer += 1;
                self.ids.insert(peer_id, id);
                self.peers.insert(id, peer_id);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .set_application_score(&peer_id, net::UNADMITTED_SCORE);
                if endpoint.is_dialer() {
                    let addr = endpoint.get_remote_address().clone();
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                self.input(Input::Connected { peer: core::PeerId(id), node });
            }
            SwarmEvent::ConnectionClosed {
                peer_id, connection_id, num_established, cause, ..
            } => {
                let relayed = self
                    .conns
                    .get(&peer_id)
                    .and_then(|c| c.get(&connection_id))
                    .is_some_and(|c| c.1);
                tracing::info!(peer = %peer_id, relayed, remaining = num_established, cause = ?cause, "connection closed");
                if let Some(c) = self.conns.get_mut(&peer_id) {
                    c.remove(&connection_id);
                    if c.is_empty() {
                        self.conns.remove(&peer_id);
                        self.rtt.remove(&peer_id);
                    }
                }
                if num_established > 0 {
                    return;
                }
                let dropping = self.dropping.remove(&peer_id);
                if !relayed || dropping || !self.ids.contains_key(&peer_id) {
                    self.end_session(peer_id);
                } else {
                    self.parting.insert(peer_id, Instant::now() + SESSION_GRACE);
                }
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour(ev),
            SwarmEvent::IncomingConnectionError {
                error: libp2p::swarm::ListenError::Denied { cause },
                ..
            } if cause.downcast_ref::<libp2p::allow_block_list::Blocked>().is_some() => {
                self.banned_refused += 1;
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                self.handshakes_refused += 1;
                tracing::info!(from = %send_back_addr, %error, "incoming connection refused in the handshake");
            }
            _ => {}
        }
    }

    pub(super) fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let Some(id) = self.ids.get(&propagation_source).copied() else {
                    self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        gossipsub::MessageAcceptance::Ignore,
                    );
                    return;
                };
                let token = self.next_token;
                self.next_token += 1;
                self.pending_gossip.insert(token, (message_id, propagation_source));
                self.input(Input::Gossip { peer: core::PeerId(id), token, bytes: message.data });
            }
            BehaviourEvent::Msg(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request { request, channel, .. } => {
                        let _ = self.swarm.behaviour_mut().msg.send_response(channel, Vec::new());
                        if let Some(id) = self.ids.get(&peer).copied() {
                            self.input(Input::Bytes { peer: core::PeerId(id), bytes: request });
                        }
                    }
                    request_response::Message::Response { .. } => {}
                }
            }
            BehaviourEvent::Inventory(request_response::Event::Message {
                peer, message, ..
            }) => {
                match message {
                    request_response::Message::Request { channel, request, .. } => {
                        // The full lists are for admitted peers only. An empty request asks
                        // for the inventory, `findings` for the vulnerability findings.
                        let body = match (self.admitted.contains(&peer), request.as_slice()) {
                            (false, _) => Vec::new(),
                            (true, b"findings") => self.findings_served(),
                            (true, r) if r.starts_with(b"delivered:") => {
                                self.on_delivery_notice(&peer, &r[b"delivered:".len()..]);
                                Vec::new()
                            }
                            (true, r) if r.starts_with(b"audit:") => {
                                let since = std::str::from_utf8(&r[b"audit:".len()..])
                                    .ok()
                                    .and_then(|s| s.parse::<u64>().ok());
                                let max = crate::net::INVENTORY_BYTES_MAX - 64 * 1024;
                                self.audit_export(since, max)
                                    .map(String::into_bytes)
                                    .unwrap_or_default()
                            }
                            (true, r) if r.starts_with(b"advisories:") => {
                                let cve = String::from_utf8_lossy(&r[b"advisories:".len()..]);
                                serde_json::to_vec(&self.advisories_of(&cve)).unwrap_or_default()
                            }
                            (true, _) => serde_json::to_vec(&self.inventory).unwrap_or_default(),
                        };
                        let _ = self.swarm.behaviour_mut().inventory.send_response(channel, body);
                    }
                    request_response::Message::Response { request_id, response } => {
                        if let Some((node, reply)) = self.inventory_waiting.remove(&request_id) {
                            let _ = reply.send(self.remote_inventory(node, &response));
                        } else if let Some((node, reply)) = self.audit_waiting.remove(&request_id) {
                            let _ = reply.send(self.checked_export(node, &response));
                        } else if let Some((node, reply, cve)) =
                            self.findings_waiting.remove(&request_id)
                        {
                            let answer = match cve {
                                None => self.remote_findings(node, &response),
                                Some(_) => self.remote_advisories(node, &response),
                            };
                            let _ = reply.send(answer);
                        }
                    }
                }
            }
            BehaviourEvent::Inventory(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                if let Some((node, reply)) = self.inventory_waiting.remove(&request_id) {
                    let _ = reply.send(control::refused(format!(
                        "fetching the inventory of {node}: {error}"
                    )));
                } else if let Some((node, reply)) = self.audit_waiting.remove(&request_id) {
                    let _ = reply.send(control::refused(format!(
                        "fetching the audit log of {node}: {error}"
                    )));
                } else if let Some((node, reply, _)) = self.findings_waiting.remove(&request_id) {
                    let _ = reply.send(control::refused(format!(
                        "fetching the findings of {node}: {error}"
                    )));
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, is_new_peer, .. }) => {
                if is_new_peer {
                    self.discover.new_peer();
                }
                if self.ids.len() < self.cfg.peers_target && !self.ids.contains_key(&peer) {
                    let _ = self.swarm.dial(peer);
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => {
                if step.last && matches!(result, kad::QueryResult::Bootstrap(_)) {
                    // This node's bootstrap or one the DHT ran by itself.
                    if self.discover.bootstrap_done(id) {
                        tracing::debug!(
                            "the DHT brought no new peer: bootstraps wait until a peer is lost"
                        );
                    }
                }
                if let kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) = result
                {
                    self.on_providers(id, providers.into_iter().collect());
                }
                if step.last {
                    self.query_done(id);
                }
            }
            BehaviourEvent::Dcutr(ev) => match ev.result {
                Ok(_) => {
                    self.hole_punches.0 += 1;
                    tracing::info!(peer = %ev.remote_peer_id, "direct connection by hole punching");
                }
                Err(e) => {
                    self.hole_punches.1 += 1;
                    tracing::info!(peer = %ev.remote_peer_id, error = %e, "hole punching failed; staying relayed");
                }
            },
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "reachable through the relay");
                self.discover_soon();
            }
            BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. }) => {
                self.rtt.insert(peer, rtt);
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if self.ids.len() < self.cfg.peers_target && !self.ids.contains_key(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            _ => {}
        }
    }
}
