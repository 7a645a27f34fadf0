package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

var fetchStarted = metav1.NewTime(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC))

// fetchPod is a model pod whose fetch init container is in state st (and had last before).
func fetchPod(name string, st corev1.ContainerState, last corev1.ContainerState) corev1.Pod {
	return corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.PodStatus{Phase: corev1.PodPending, InitContainerStatuses: []corev1.ContainerStatus{
			{Name: containerFetch, State: st, LastTerminationState: last},
		}},
	}
}

func running() corev1.ContainerState {
	return corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: fetchStarted}}
}

func exited(code int32, msg string) corev1.ContainerState {
	return corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code, Message: msg, Reason: "Error"}}
}

func waiting(reason, msg string) corev1.ContainerState {
	return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
}

func TestWeightsCondition(t *testing.T) {
	const unauthorized = "Unauthorized: token missing or not allowed for hf://acme/private revision main: HTTP 401"
	none := corev1.ContainerState{}
	deleting := fetchPod("old", exited(1, "gone soon"), none)
	deleting.DeletionTimestamp = &fetchStarted
	cases := map[string]struct {
		uri        string
		pods       []corev1.Pod
		status     metav1.ConditionStatus
		reason     string
		msgContain []string
	}{
		"pvc:// needs no fetch": {
			uri: "pvc://weights/llama", status: metav1.ConditionTrue, reason: servingv1alpha1.InferenceModelReasonWeightsOnVolume,
			msgContain: []string{"PersistentVolumeClaim weights", "/llama"},
		},
		"no pod yet": {
			status: metav1.ConditionUnknown, reason: servingv1alpha1.InferenceModelReasonWeightsPending,
		},
		"running": {
			pods:   []corev1.Pod{fetchPod("llama-1", running(), none)},
			status: metav1.ConditionFalse, reason: servingv1alpha1.InferenceModelReasonWeightsFetching,
			msgContain: []string{"pod llama-1", "2026-11-25T10:00:00Z", "kubectl logs -n ns llama-1 -c fetch"},
		},
		"running again after a failure says why it failed": {
			pods:   []corev1.Pod{fetchPod("llama-1", running(), exited(1, "SourceUnavailable: connection reset"))},
			status: metav1.ConditionFalse, reason: servingv1alpha1.InferenceModelReasonWeightsFetching,
			msgContain: []string{"the previous attempt failed: SourceUnavailable: connection reset"},
		},
		"failed with the termination message": {
			pods:   []corev1.Pod{fetchPod("llama-1", exited(1, unauthorized), none)},
			status: metav1.ConditionFalse, reason: servingv1alpha1.InferenceModelReasonWeightsFailed,
			msgContain: []string{"pod llama-1", unauthorized},
		},
		"back-off between attempts is a failure": {
			pods:   []corev1.Pod{fetchPod("llama-1", waiting("CrashLoopBackOff", "back-off 40s"), exited(1, unauthorized))},
			status: metav1.ConditionFalse, reason: servingv1alpha1.InferenceModelReasonWeightsFailed,
			msgContain: []string{unauthorized},
		},
		"an image that cannot be pulled is a failure": {
			pods:   []corev1.Pod{fetchPod("llama-1", waiting("ImagePullBackOff", "registry.test/runtime:v1 not found"), none)},
			status: metav1.ConditionFalse, reason: servingv1alpha1.InferenceModelReasonWeightsFailed,
			msgContain: []string{"ImagePullBackOff", "not found"},
		},
		"a pod starting up is pending": {
			pods:   []corev1.Pod{fetchPod("llama-1", waiting("PodInitializing", ""), none)},
			status: metav1.ConditionUnknown, reason: servingv1alpha1.InferenceModelReasonWeightsPending,
		},
		"fetched": {
			pods:   []corev1.Pod{fetchPod("llama-1", exited(0, "fetched 7 files, 16.1 GiB"), none)},
			status: metav1.ConditionTrue, reason: servingv1alpha1.InferenceModelReasonWeightsFetched,
			msgContain: []string{"fetched 7 files, 16.1 GiB"},
		},
		"a failing new pod wins over one that fetched": {
			pods:   []corev1.Pod{fetchPod("a-serving", exited(0, "fetched"), none), fetchPod("b-new", exited(1, unauthorized), none)},
			status: metav1.ConditionFalse, reason: servingv1alpha1.InferenceModelReasonWeightsFailed,
			msgContain: []string{"b-new"},
		},
		"a pod being deleted does not count": {
			pods:   []corev1.Pod{deleting, fetchPod("new", exited(0, "fetched"), none)},
			status: metav1.ConditionTrue, reason: servingv1alpha1.InferenceModelReasonWeightsFetched,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			m := newModel("ns", "llama", "", 0, nil)
			if tc.uri != "" {
				m.Spec.Model.URI = tc.uri
			}
			c := weightsCondition(m, tc.pods)
			if c.Type != servingv1alpha1.InferenceModelConditionWeightsReady || c.Status != tc.status || c.Reason != tc.reason {
				t.Fatalf("got %s=%s/%s (%s), want %s/%s", c.Type, c.Status, c.Reason, c.Message, tc.status, tc.reason)
			}
			for _, s := range tc.msgContain {
				if !strings.Contains(c.Message, s) {
					t.Errorf("message %q does not say %q", c.Message, s)
				}
			}
		})
	}
}

// The kubelet is played by the test: it writes the fetch container's state into the pod's
// status, as a node would.
func TestWeightsReadyFollowsTheFetchContainer(t *testing.T) {
	startManager(t)
	ctx := context.Background()
	ns := newNamespace(t, nil)
	model := newModel(ns, "weights", "", 0, nil)
	create(t, model)
	waitCondition(t, model, servingv1alpha1.InferenceModelConditionWeightsReady, metav1.ConditionUnknown, servingv1alpha1.InferenceModelReasonWeightsPending)

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "weights-abc12", Namespace: ns, Labels: selectorLabels(model)},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: containerFetch, Image: "runtime"}},
			Containers:     []corev1.Container{{Name: containerEngine, Image: "engine"}},
		},
	}
	create(t, pod)
	setFetch := func(st, last corev1.ContainerState) {
		t.Helper()
		pod.Status = fetchPod(pod.Name, st, last).Status
		if err := env.Client.Status().Update(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}

	setFetch(running(), corev1.ContainerState{})
	got := waitCondition(t, model, servingv1alpha1.InferenceModelConditionWeightsReady, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonWeightsFetching)
	if err := conditionIs(got, servingv1alpha1.ConditionReady, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonWeightsFetching); err != nil {
		t.Error(err)
	}

	const refused = "Unauthorized: token missing or not allowed for hf://meta-llama/Llama-3.1-8B-Instruct revision main: HTTP 401"
	setFetch(exited(1, refused), corev1.ContainerState{})
	got = waitCondition(t, model, servingv1alpha1.ConditionReady, metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonWeightsFailed)
	if ready := meta.FindStatusCondition(got.Status.Conditions, servingv1alpha1.ConditionReady); !strings.Contains(ready.Message, refused) {
		t.Errorf("Ready says %q, not why the weights failed", ready.Message)
	}
	eventually(t, "a WeightsFailed Warning event", func() error { return hasEvent(ns, model.Name, servingv1alpha1.InferenceModelReasonWeightsFailed) })

	setFetch(exited(0, "fetched 7 files, 16.1 GiB from hf://meta-llama/Llama-3.1-8B-Instruct"), exited(1, refused))
	got = waitCondition(t, model, servingv1alpha1.InferenceModelConditionWeightsReady, metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonWeightsFetched)
	if c := meta.FindStatusCondition(got.Status.Conditions, servingv1alpha1.InferenceModelConditionWeightsReady); !strings.Contains(c.Message, "fetched 7 files") {
		t.Errorf("WeightsReady says %q, not the fetch summary", c.Message)
	}
}
