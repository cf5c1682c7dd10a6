//! Services on one machine: pods' IPs come from 127.1.0.0/16 (the kubelet leases them), Services'
//! cluster IPs from 127.2.0.0/16 (the API assigns them); the [`endpoints`] controller lists each
//! Service's pods, and the [`proxy`] forwards a cluster IP's ports to the ready ones.

pub mod endpoints;
pub mod proxy;
