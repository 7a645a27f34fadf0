package probe

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
	"github.com/helixflow/helixflow/internal/gpu"
)

// FieldOwner is the server-side apply field manager of the probe's writes.
const FieldOwner = "helixflow-probe"

// DefaultHeartbeat is how often an unchanged report is re-written to prove the probe lives.
const DefaultHeartbeat = 5 * time.Minute

// Reporter samples one node and keeps its GPUNode current.
type Reporter struct {
	Client   client.Client
	NodeName string
	// Open returns the prober; it is retried on every tick until it succeeds, so a driver
	// that appears after the probe started is picked up without a restart.
	Open func() (gpu.Prober, error)
	// Heartbeat is the longest an unchanged report goes without a write.
	Heartbeat time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Metrics, when set, is updated on every sample.
	Metrics *Metrics

	prober    gpu.Prober
	written   *servingv1alpha1.GPUNodeStatus
	lastWrite time.Time
	lastTick  time.Time
	created   bool
}

func (r *Reporter) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// Tick takes one sample and writes the report when it changed or the heartbeat is due.
// It returns whether it wrote.
func (r *Reporter) Tick(ctx context.Context) (bool, error) {
	now := r.now()
	r.lastTick = now
	var snap gpu.Snapshot
	var err error
	if r.prober == nil {
		r.prober, err = r.Open()
	}
	if err == nil {
		snap, err = r.prober.Sample(ctx)
	}
	if r.Metrics != nil {
		r.Metrics.Observe(snap, err)
	}
	var previous []metav1.Condition
	if r.written != nil {
		previous = r.written.Conditions
	}
	st := BuildStatus(snap, err, previous, metav1.NewTime(now))
	heartbeat := r.Heartbeat
	if heartbeat <= 0 {
		heartbeat = DefaultHeartbeat
	}
	if !changed(r.written, &st) && now.Sub(r.lastWrite) < heartbeat {
		return false, nil
	}
	if err := r.write(ctx, &st); err != nil {
		return false, err
	}
	r.written, r.lastWrite = &st, now
	return true, nil
}

// write server-side applies the GPUNode (once) and then its status.
func (r *Reporter) write(ctx context.Context, st *servingv1alpha1.GPUNodeStatus) error {
	if !r.created {
		node := &unstructured.Unstructured{}
		node.SetAPIVersion(servingv1alpha1.GroupVersion.String())
		node.SetKind("GPUNode")
		node.SetName(r.NodeName)
		node.SetLabels(map[string]string{servingv1alpha1.LabelManagedBy: servingv1alpha1.ManagedByValue})
		if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(node), client.FieldOwner(FieldOwner)); err != nil {
			return fmt.Errorf("applying GPUNode %s: %w", r.NodeName, err)
		}
		r.created = true
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(st)
	if err != nil {
		return err
	}
	u := &unstructured.Unstructured{Object: map[string]any{"status": m}}
	u.SetAPIVersion(servingv1alpha1.GroupVersion.String())
	u.SetKind("GPUNode")
	u.SetName(r.NodeName)
	if err := r.Client.SubResource("status").Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		r.created = false // the object may have been deleted: re-create on the next write
		return fmt.Errorf("applying GPUNode %s status: %w", r.NodeName, err)
	}
	return nil
}

// Healthy is false when no tick happened within the given age (the loop is stuck).
func (r *Reporter) Healthy(maxAge time.Duration) bool {
	return !r.lastTick.IsZero() && r.now().Sub(r.lastTick) <= maxAge
}

// Run ticks every interval until ctx ends. A failed write is logged and retried on the
// next tick rather than ending the probe: a DaemonSet pod that exits just crash-loops.
func (r *Reporter) Run(ctx context.Context, interval time.Duration) error {
	logger := log.FromContext(ctx).WithValues("node", r.NodeName)
	t := time.NewTicker(interval)
	defer t.Stop()
	defer func() {
		if r.prober != nil {
			_ = r.prober.Close()
		}
	}()
	for {
		if wrote, err := r.Tick(ctx); err != nil {
			logger.Error(err, "probe tick")
		} else if wrote {
			logger.V(1).Info("GPUNode report written")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
