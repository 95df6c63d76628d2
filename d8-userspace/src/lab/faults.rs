//! What tests and the demo do to a lab while it runs: the cluster changes (`apply`), API-only
//! changes, and faults (pods gone, listeners stopped, packets dropped, kube-proxy stopped or
//! unhealthy), and kubelet-style probes. Each keeps the lab's rules, API view and namespaces
//! consistent with what a real node would show after the same event.

use super::*;

impl Lab {
    // ---- changes and faults -----------------------------------------------------------------

    /// Re-syncs everything to `spec`, as kube-proxy and the API would after the cluster changed:
    /// pods added, removed, moved or changed get their namespaces and servers (re)built, the rules
    /// are rewritten and the API view replaced. Clears every fault. The node's and external
    /// client's addressing and the node's families cannot change.
    pub fn apply(&mut self, spec: ClusterSpec) -> Result<(), Error> {
        validate(&spec, self.mode)?;
        if spec.families() != self.spec.families() {
            return Err(Error::Spec(
                "apply cannot change the node's families (dual_stack, ipv6_only): build a new lab".into(),
            ));
        }
        if spec.node_ip != self.spec.node_ip
            || spec.external_client_ip != self.spec.external_client_ip
            || spec.client_pod_ip != self.spec.client_pod_ip
            || spec.node_prefix_len != self.spec.node_prefix_len
        {
            return Err(Error::Spec(
                "apply cannot change node, external client or client pod addresses".into(),
            ));
        }
        let wanted: BTreeMap<String, PodSpec> = spec
            .pods
            .iter()
            .filter(|p| p.is_local(&spec))
            .map(|p| (p.key(), p.clone()))
            .collect();
        // Remove pods that are gone, or whose namespace-level setup changed.
        let running: Vec<String> = self.pods.keys().cloned().collect();
        for key in running {
            let old = self.spec.find_pod(&key).cloned();
            let keep = match (old, wanted.get(&key)) {
                (Some(old), Some(new)) => old.ip == new.ip && old.listeners == new.listeners,
                _ => false,
            };
            if !keep {
                self.remove_pod_runtime(&key)?;
            }
        }
        self.spec = spec.clone();
        for (key, pod) in &wanted {
            match self.pods.get(key).map(|rt| rt.drop_all) {
                None => self.create_pod(pod)?,
                Some(drop_all) => {
                    // Faults come undone: the drop table goes, stopped listeners come back.
                    if drop_all != pod.drop_all {
                        self.set_drop_all(key, pod.drop_all)?;
                    }
                    self.restart_missing_listeners(key)?;
                }
            }
        }
        self.rules_spec = spec.clone();
        self.api_spec = spec;
        self.sync_rules()?;
        self.sync_kube_proxy()?;
        Ok(())
    }

    fn restart_missing_listeners(&mut self, key: &str) -> Result<(), Error> {
        let pod = self.local_pod(key)?;
        for l in &pod.listeners {
            self.start_listener(key, l.port)?;
        }
        Ok(())
    }

    /// Removes a pod from the API view only: its EndpointSlice entry and Pod object vanish while
    /// kube-proxy's rules still DNAT to it (a stale endpoint). Undo with [`Self::restore_api`].
    pub fn delete_from_api(&mut self, pod: &str) -> Result<(), Error> {
        let key = self
            .spec
            .find_pod(pod)
            .map(PodSpec::key)
            .ok_or_else(|| Error::NoSuchPod(pod.to_string()))?;
        self.api_spec.pods.retain(|p| p.key() != key);
        Ok(())
    }

    /// Changes a pod's readiness in the API view only (its EndpointSlice condition and Pod status)
    /// while the rules keep their old dispatch: with `false`, the rules still send traffic to an
    /// endpoint the API calls not ready (a stale endpoint of the "not ready" kind).
    pub fn set_api_ready(&mut self, pod: &str, ready: bool) -> Result<(), Error> {
        self.api_spec
            .find_pod_mut(pod)
            .ok_or_else(|| Error::NoSuchPod(pod.to_string()))?
            .ready = ready;
        Ok(())
    }

    /// The classic stale endpoint: the pod is gone (namespace deleted, API objects removed) while
    /// kube-proxy's rules still DNAT to it. [`Self::delete_from_api`] + [`Self::delete_pod`];
    /// undo with [`Self::apply`].
    pub fn make_stale_endpoint(&mut self, pod: &str) -> Result<(), Error> {
        self.delete_from_api(pod)?;
        self.delete_pod(pod)
    }

    /// Puts the API view back to the world spec.
    pub fn restore_api(&mut self) {
        self.api_spec = self.spec.clone();
    }

    /// Deletes a local pod's namespace (its servers stop, its veth and route vanish) while rules
    /// and API keep it: a stale endpoint nobody answers for. Undo with [`Self::restore_pod`].
    pub fn delete_pod(&mut self, pod: &str) -> Result<(), Error> {
        let key = self.local_pod(pod)?.key();
        self.remove_pod_runtime(&key)
    }

    /// Re-creates a pod deleted by [`Self::delete_pod`].
    pub fn restore_pod(&mut self, pod: &str) -> Result<(), Error> {
        let spec = self.local_pod(pod)?;
        if !self.pods.contains_key(&spec.key()) {
            self.create_pod(&spec)?;
        }
        Ok(())
    }

    /// Removes one Service's rules (every chain, map element and REJECT of it) while the API keeps
    /// it: `kube_proxy_rules_missing`. Undo with [`Self::resync_rules`].
    pub fn flush_service_rules(&mut self, namespace: &str, name: &str) -> Result<(), Error> {
        if self.rules_spec.find_service(namespace, name).is_none() {
            return Err(Error::Spec(format!("no service {namespace}/{name} in the rules")));
        }
        self.rules_spec
            .services
            .retain(|s| !(s.namespace == namespace && s.name == name));
        self.sync_rules()
    }

    /// Removes one dual-stack Service's IPv6 rules while its IPv4 rules and the API (both
    /// ClusterIPs, both EndpointSlices) stay: kube-proxy's IPv6 proxier did not program it, so the
    /// Service answers over IPv4 and not over IPv6. Undo with [`Self::resync_rules`].
    pub fn flush_service_ipv6_rules(&mut self, namespace: &str, name: &str) -> Result<(), Error> {
        if !self.spec.dual_stack {
            return Err(Error::Spec("IPv6 rules exist in a dual-stack lab only".into()));
        }
        let svc = self
            .rules_spec
            .services
            .iter_mut()
            .find(|s| s.namespace == namespace && s.name == name)
            .ok_or_else(|| Error::Spec(format!("no service {namespace}/{name} in the rules")))?;
        // The IPv6 proxier writes only the Services it sees as IPv6 ones.
        svc.single_stack = true;
        self.sync_rules()
    }

    /// Rewrites the rules from the world spec (undoes rule faults).
    pub fn resync_rules(&mut self) -> Result<(), Error> {
        self.rules_spec = self.spec.clone();
        self.sync_rules()
    }

    /// Changes readiness in the world, the API and the rules at once (kube-proxy's normal reaction).
    pub fn set_ready(&mut self, pod: &str, ready: bool) -> Result<(), Error> {
        let mut spec = self.spec.clone();
        spec.find_pod_mut(pod)
            .ok_or_else(|| Error::NoSuchPod(pod.to_string()))?
            .ready = ready;
        self.apply(spec)
    }

    /// Changes readiness in the world, the API and the rules at once, like [`Self::set_ready`],
    /// but leaves every other fault in place ([`Self::set_ready`] re-applies the world spec, which
    /// undoes them): for scripts that stack faults, such as `d8-trace demo`.
    pub fn set_ready_keeping_faults(&mut self, pod: &str, ready: bool) -> Result<(), Error> {
        let mut found = false;
        for spec in [&mut self.spec, &mut self.rules_spec, &mut self.api_spec] {
            if let Some(p) = spec.find_pod_mut(pod) {
                p.ready = ready;
                found = true;
            }
        }
        if !found {
            return Err(Error::NoSuchPod(pod.to_string()));
        }
        self.sync_rules()
    }

    /// Stops a pod's listener on `port`: new connections get RST (`backend_refused`), UDP gets
    /// port-unreachable. Undo with [`Self::start_listener`].
    pub fn stop_listener(&mut self, pod: &str, port: u16) -> Result<(), Error> {
        let key = self.local_pod(pod)?.key();
        let rt = self
            .pods
            .get_mut(&key)
            .ok_or_else(|| Error::NoSuchPod(pod.to_string()))?;
        rt.servers.retain_mut(|s| {
            if s.addr.port() == port {
                s.stop();
                false
            } else {
                true
            }
        });
        Ok(())
    }

    /// Starts the pod's spec listener on `port` again (no-op when it runs).
    pub fn start_listener(&mut self, pod: &str, port: u16) -> Result<(), Error> {
        let spec = self.local_pod(pod)?;
        let listener = spec
            .listeners
            .iter()
            .find(|l| l.port == port)
            .copied()
            .ok_or_else(|| Error::Spec(format!("pod {} has no listener on {port}", spec.key())))?;
        let rt = self
            .pods
            .get_mut(&spec.key())
            .ok_or_else(|| Error::NoSuchPod(pod.to_string()))?;
        if rt.servers.iter().any(|s| s.addr.port() == port) {
            return Ok(());
        }
        let servers = super::pod_servers(&rt.ns, &spec.name, port, listener.kind, &self.spec)?;
        rt.servers.extend(servers);
        Ok(())
    }

    /// Makes a pod drop every packet in and out (an nftables table inside the POD namespace, with
    /// loopback exempt) or lifts that again.
    ///
    /// IPv6 neighbor discovery stays allowed, as ARP (no IP packet) does for IPv4: without it the
    /// node could not resolve the pod's address and would answer the client itself (ICMPv6 address
    /// unreachable), which is a gone pod, not one that drops what reaches it.
    pub fn set_drop_all(&mut self, pod: &str, drop: bool) -> Result<(), Error> {
        let key = self.local_pod(pod)?.key();
        let rt = self
            .pods
            .get_mut(&key)
            .ok_or_else(|| Error::NoSuchPod(pod.to_string()))?;
        let text = if drop {
            "add table inet d8lab-drop\ndelete table inet d8lab-drop\ntable inet d8lab-drop {\n\
             \tset nd { type icmpv6_type; elements = { nd-neighbor-solicit, nd-neighbor-advert } }\n\
             \tchain input { type filter hook input priority -400; policy drop; iif \"lo\" accept; icmpv6 type @nd accept; }\n\
             \tchain output { type filter hook output priority -400; policy drop; oif \"lo\" accept; icmpv6 type @nd accept; }\n}\n"
        } else {
            "add table inet d8lab-drop\ndelete table inet d8lab-drop\n"
        };
        netns::exec_in(&rt.ns, "nft", &["-f", "-"], Some(text))?;
        rt.drop_all = drop;
        Ok(())
    }

    /// Stops the simulated kube-proxy: `/healthz` and `/metrics` stop answering and its pod leaves
    /// the API view; the rules it wrote stay (`kube_proxy_not_running`). Undo with
    /// [`Self::start_kube_proxy`].
    pub fn stop_kube_proxy(&mut self) {
        self.kube_proxy = None;
        self.api_spec.kube_proxy = None;
        self.spec.kube_proxy = None;
    }

    /// Starts the simulated kube-proxy with `version` (also what the API's kube-proxy pod and
    /// Node report).
    pub fn start_kube_proxy(&mut self, version: &str) -> Result<(), Error> {
        self.kube_proxy = None;
        let kp = Some(KubeProxySpec {
            version: version.to_string(),
        });
        self.spec.kube_proxy = kp.clone();
        self.api_spec.kube_proxy = kp;
        self.sync_kube_proxy()
    }

    /// kube-proxy's sync loop stalls: its rules stay as written for `rules` (the cluster as it was
    /// at its last sync), `/metrics` says that sync was `synced_ago` s ago and a sync has been
    /// queued since the API changed, `changed_ago` s ago, which the EndpointSlices'
    /// last-change-trigger-time says too. `/healthz` is left as it is (see
    /// [`Self::set_kube_proxy_healthy`]). Undo with [`Self::apply`].
    pub fn stall_kube_proxy(&mut self, rules: &ClusterSpec, synced_ago: u64, changed_ago: u64) -> Result<(), Error> {
        self.rules_spec = rules.clone();
        self.sync_rules()?;
        let now = servers::unix_now();
        let state = &self.kube_proxy_state;
        state.last_sync.store(now.saturating_sub(synced_ago), Ordering::Relaxed);
        state
            .last_queued
            .store(now.saturating_sub(changed_ago), Ordering::Relaxed);
        self.api_spec.api_changed_at = Some(now.saturating_sub(changed_ago));
        Ok(())
    }

    /// nftables mode: what a partial sync leaves for about a second after `svc` was deleted: its
    /// service and endpoint chains flushed and no longer referenced, not yet deleted (kube-proxy
    /// deletes them on a later sync). The next rule sync removes them.
    pub fn leave_flushed_chains(&self, svc: &ServiceSpec) -> Result<(), Error> {
        if self.mode != ProxyMode::Nftables {
            return Err(Error::Spec("flushed chains are an nftables-mode state".into()));
        }
        let mut tx = String::new();
        for port in &svc.ports {
            tx.push_str(&format!(
                "add chain ip kube-proxy service-{}\n",
                nftables::service_base(svc, port)
            ));
            for ep in self.spec.endpoints(svc, port) {
                tx.push_str(&format!(
                    "add chain ip kube-proxy endpoint-{}\n",
                    nftables::endpoint_base(svc, port, &ep)
                ));
            }
        }
        netns::exec_in(&self.node_ns, "nft", &["-f", "-"], Some(&tx))?;
        Ok(())
    }

    /// Makes the simulated kube-proxy's `/healthz` answer 200 (true) or 503 (false).
    pub fn set_kube_proxy_healthy(&self, healthy: bool) {
        self.kube_proxy_state.healthy.store(healthy, Ordering::Relaxed);
    }

    // ---- probes ----------------------------------------------------------------------------

    /// `(pod IP, port)` of every probe kubelet runs on this node (local pods with probes).
    pub fn probe_targets(&self) -> Vec<SocketAddrV4> {
        self.spec
            .pods
            .iter()
            .filter(|p| p.is_local(&self.spec))
            .flat_map(|p| {
                p.probe_ports()
                    .into_iter()
                    .map(move |port| SocketAddrV4::new(p.ip, port))
            })
            .collect()
    }

    /// Runs every kubelet probe once from the node namespace (connect, then RST).
    pub fn probe_all(&self, timeout: Duration) -> Result<Vec<(SocketAddrV4, TcpOutcome)>, Error> {
        self.probe_targets()
            .into_iter()
            .map(|addr| kubelet_probe(&self.node_ns, addr, timeout).map(|o| (addr, o)))
            .collect()
    }

    /// Starts kubelet-style probing of every probe target every `period` until the returned
    /// handle is dropped.
    pub fn start_prober(&self, period: Duration) -> Prober {
        self.start_prober_in(period, IpFamily::V4)
    }

    /// [`Self::start_prober`] over `family`: the pods' addresses of that family, as kubelet
    /// probes them on a cluster whose primary family it is (a pod's `status.podIP`). IPv6 needs a
    /// dual-stack lab.
    pub fn start_prober_in(&self, period: Duration, family: IpFamily) -> Prober {
        let targets = self
            .probe_targets()
            .into_iter()
            .map(|a| std::net::SocketAddr::new(in_family(*a.ip(), family), a.port()))
            .collect();
        Prober::start(self.node_ns.clone(), targets, period)
    }
}
