// Package usage counts what each ApiKey uses, exactly once, into the key's status.usage.
//
// Two halves talk over gRPC (helixflow.usage.v1.UsageAggregator, see
// proto/helixflow/usage/v1/usage.proto):
//
//   - Reporter, in every `runtime serve` process: Record adds a request's tokens to an
//     in-memory map (cheap, never blocks on the network). Every Interval a background loop cuts
//     the pending counts into a batch with the next sequence number and sends it, resending the
//     very same batch with capped exponential backoff until it is acknowledged; batches go one at
//     a time, in order. Flush sends everything pending and waits for the acknowledgements; the
//     runtime calls it on graceful shutdown.
//   - Aggregator, in every manager replica (a manager.Runnable that needs no leadership):
//     Report queues a batch's counts per ApiKey, and every FlushInterval each key with queued
//     counts is written once (Status().Update, guarded by resourceVersion; on a conflict it
//     re-reads and recomputes). Report answers only after its counts are stored, so an
//     acknowledged batch is never lost when a manager dies afterwards.
//
// Exactly once: status.usage.reporters holds, per reporter, the seq of the last batch applied
// to that key. A batch is applied to a key only when its seq is above it, and the new seq is
// written in the same update as the new totals. A batch resent after a lost acknowledgement, a
// manager restart or to another replica is therefore skipped as a duplicate, and two replicas
// writing the same key at once are serialised by the API server's optimistic concurrency.
// Reporter entries not updated for an hour are pruned (a runtime does not retry a batch that
// long), and at most MaxReporters (1024) are kept per key, the oldest dropped first: a key
// used through more runtime processes than that within an hour loses the duplicate
// protection of the oldest.
//
// Key objects: each entry names the ApiKey's uid, that of the object the runtime
// authenticated the requests with. An entry for another uid than the key's (a key deleted and
// created again under the same name) is dropped, as is one for a key that no longer exists;
// a key the cache does not have is read from the API server before that conclusion.
//
// Windows: the counts are per quota window (auth.QuotaWindowStart of spec.quota.window, Month
// without a quota); the first batch applied in a new window starts the counts from zero. A
// batch is counted in the window in which the aggregator applies it. Each write also sets the
// QuotaExhausted condition (auth.SetQuotaCondition); runtimes refuse the key from the counts
// themselves (auth.KeyRefusal) as soon as they see the update.
//
// Security: each runtime sends, with every batch, a token of its pod's ServiceAccount for
// TokenAudience (projected into model pods by the InferenceModel reconciler, read again for
// each batch: runtime serve --usage-token-file). The aggregator asks the API server who it
// belongs to (a TokenReview, remembered for a minute per token), refuses a batch without a
// valid one (UNAUTHENTICATED) and one that names an ApiKey outside the ServiceAccount's
// namespace, or that comes under a reporter_id other than the token's pod's (PERMISSION_DENIED:
// the token must be bound to a pod, as projected ones are, and a reporter ID is exactly the
// pod name, "-" and 16 hex digits, NewReporterID's; pods named over 111 characters cannot
// report), before anything is queued. The namespace is the boundary: whoever may create pods
// in a namespace may run them as its models' ServiceAccounts, and so charge its ApiKeys, but
// no other namespace's (they could as well mount the keys' Secrets); a pod of theirs cannot
// send batches as another pod's runtime and so keep its next batches from counting. That
// still takes only a token bound to the model pod (who may create the ServiceAccount's tokens
// can mint one), or no token at all under --usage-allow-unauthenticated. The API
// server does not take a token of that audience, and the aggregator no token of another.
// TokenReviews are limited (50 per second, bursts of 200, per replica; beyond, a token not
// seen before is answered UNAVAILABLE and the runtime resends), so made-up tokens cannot turn
// into a flood of API requests; a token reviewed before is taken until it expires while the
// reviews are used up or the API server fails, so they delay only runtimes with new tokens. The
// manager's --usage-allow-unauthenticated takes batches without a token too, for runtimes
// older than tokens during an upgrade, and --usage-allow-plaintext plain-gRPC connections.
//
// The port speaks TLS (WithServingTLS, tls.go): every replica issues itself a serving
// certificate for the host runtimes dial, from a CA kept in the Secret CASecretName of the
// manager's namespace (made by the first replica that finds none, and again when it is
// deleted; rotated on CARotateAnnotation or near its expiry, keeping the old CA as the
// previous: replicas issue from it for CAActivationDelay, and it stays published beside the
// new one for CAOverlap, so no connection fails). The manager publishes the CA's certificate
// (CAConfigMapKey, in each model namespace's JWKS ConfigMap); model pods mount it and
// runtimes verify the aggregator with it (WithServerCA, runtime serve --usage-ca-file), so a
// token cannot be read off the network. The
// chart and config/manager also install a NetworkPolicy that lets only model pods
// (app.kubernetes.io/name=helixflow-runtime, managed-by helixflow) reach the port, where
// the network plugin enforces NetworkPolicy. Requests are capped in size (MaxRequestBytes,
// MaxBatchKeys) and validated before anything is queued. An entry for a name the manager's
// cache does not hold, or holds under another uid, costs a read from the API server before
// it is dropped; those reads are limited (20 per second, bursts of 100, per replica), and a
// batch that needs more is answered UNAVAILABLE and resent later, so a flood of made-up
// names cannot turn into a flood of API requests. The uids found gone are remembered (the
// last 16384), so each costs one read, and a batch naming many deleted keys gets through
// over its resends. Such a flood, from a namespace's own pods, still delays the usage of keys
// that are really deleted or re-created while it lasts, and with it the batches behind it.
package usage

// RBAC for the aggregator: it reads ApiKeys (from the manager's cache) and writes their
// status, and asks the API server whose the runtimes' tokens are.
// +kubebuilder:rbac:groups=serving.helixflow.io,resources=apikeys,verbs=get;list;watch
// +kubebuilder:rbac:groups=serving.helixflow.io,resources=apikeys/status,verbs=get;update
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
