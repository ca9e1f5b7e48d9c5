//! ConfigMap `istio-ca-root-cert` (key `root-cert.pem`) in every namespace.
