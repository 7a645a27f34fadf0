package localcluster

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	// FakeNodeAnnotation and FakeNodeValue mark the nodes kwok manages (its
	// --manage-nodes-with-annotation-selector), and are also the key and value of FakeNodeTaint.
	FakeNodeAnnotation = "kwok.x-k8s.io/node"
	FakeNodeValue      = "fake"

	// ResourceGPU is the extended resource the NVIDIA device plugin advertises.
	ResourceGPU corev1.ResourceName = "nvidia.com/gpu"

	nodeReadyTimeout = 2 * time.Minute
)

// FakeNodeTaint is on every node AddGPUNode creates, so that only pods which opt in (with
// FakeNodeToleration) land on nodes where nothing really runs.
var FakeNodeTaint = corev1.Taint{Key: FakeNodeAnnotation, Value: FakeNodeValue, Effect: corev1.TaintEffectNoSchedule}

// FakeNodeToleration lets a pod be scheduled onto the nodes AddGPUNode creates.
func FakeNodeToleration() corev1.Toleration {
	return corev1.Toleration{
		Key:      FakeNodeTaint.Key,
		Operator: corev1.TolerationOpEqual,
		Value:    FakeNodeTaint.Value,
		Effect:   FakeNodeTaint.Effect,
	}
}

// AddGPUNode creates a Node that kwok manages, with 64 CPUs, 512Gi of memory, room for 110
// pods and gpus nvidia.com/gpu, carrying labels (for example the GPU Feature Discovery labels
// nvidia.com/gpu.product and nvidia.com/gpu.memory, in MiB) and FakeNodeTaint. It returns once
// the node is Ready and the node lifecycle controller has lifted its not-ready taint, that is,
// once the scheduler may place pods on it.
func (c *Cluster) AddGPUNode(ctx context.Context, name string, gpus int, labels map[string]string) error {
	nodeLabels := map[string]string{
		"kubernetes.io/hostname": name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
		"type":                   "kwok",
	}
	maps.Copy(nodeLabels, labels)
	resources := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("64"),
		corev1.ResourceMemory: resource.MustParse("512Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
		ResourceGPU:           resource.MustParse(strconv.Itoa(gpus)),
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      nodeLabels,
			Annotations: map[string]string{FakeNodeAnnotation: FakeNodeValue},
		},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{FakeNodeTaint}},
		// A Node's status may be set on create; kwok fills in conditions and addresses.
		Status: corev1.NodeStatus{
			Capacity:    resources,
			Allocatable: resources.DeepCopy(),
			NodeInfo:    corev1.NodeSystemInfo{Architecture: "amd64", OperatingSystem: "linux"},
		},
	}
	if _, err := c.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating node %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, nodeReadyTimeout)
	defer cancel()
	var last *corev1.Node
	err := c.poll(ctx, "node "+name+" to become Ready and schedulable", func() (bool, error) {
		n, err := c.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		last = n
		return nodeSchedulable(n), nil
	})
	if err != nil && last != nil {
		return fmt.Errorf("%w (conditions %v, taints %v)", err, last.Status.Conditions, last.Spec.Taints)
	}
	return err
}

func nodeSchedulable(n *corev1.Node) bool {
	ready := false
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	for _, t := range n.Spec.Taints {
		if t.Key == corev1.TaintNodeNotReady || t.Key == corev1.TaintNodeUnreachable {
			return false
		}
	}
	return ready && !n.Spec.Unschedulable
}
