package controllers

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// fetchState is what one pod's fetch init container says.
type fetchState int

const (
	fetchPending fetchState = iota // not started (pod not scheduled, image being pulled)
	fetchRunning
	fetchDone
	fetchFailed
)

type podFetch struct {
	pod     string
	state   fetchState
	message string // the termination message, or why it cannot start
	lastErr string // while running again: why the previous attempt failed
	since   metav1.Time
}

// readFetch reads the fetch init container's status of a pod.
func readFetch(p *corev1.Pod) podFetch {
	pf := podFetch{pod: p.Name}
	for _, cs := range p.Status.InitContainerStatuses {
		if cs.Name != containerFetch {
			continue
		}
		if t := cs.LastTerminationState.Terminated; t != nil && t.ExitCode != 0 {
			pf.lastErr = terminationText(t)
		}
		switch st := cs.State; {
		case st.Terminated != nil && st.Terminated.ExitCode == 0:
			pf.state, pf.message, pf.since = fetchDone, terminationText(st.Terminated), st.Terminated.FinishedAt
		case st.Terminated != nil:
			pf.state, pf.message, pf.since = fetchFailed, terminationText(st.Terminated), st.Terminated.FinishedAt
		case st.Running != nil:
			pf.state, pf.since = fetchRunning, st.Running.StartedAt
		case st.Waiting != nil && pf.lastErr != "":
			// CrashLoopBackOff between attempts: the last attempt's error is the news.
			pf.state, pf.message = fetchFailed, pf.lastErr
		case st.Waiting != nil && (strings.Contains(st.Waiting.Reason, "ImagePull") || st.Waiting.Reason == "InvalidImageName" || st.Waiting.Reason == "CreateContainerConfigError"):
			pf.state, pf.message = fetchFailed, st.Waiting.Reason+": "+st.Waiting.Message
		}
		return pf
	}
	return pf
}

func terminationText(t *corev1.ContainerStateTerminated) string {
	if msg := strings.TrimSpace(t.Message); msg != "" {
		return msg
	}
	return fmt.Sprintf("exit code %d (%s)", t.ExitCode, t.Reason)
}

// weightsCondition is the WeightsReady condition from the fetch init containers of the
// model's pods. A failing pod wins over the others (a new URI that cannot be fetched is the
// news even while old pods serve), then one still fetching, then one done.
func weightsCondition(m *servingv1alpha1.InferenceModel, pods []corev1.Pod) metav1.Condition {
	c := metav1.Condition{Type: servingv1alpha1.InferenceModelConditionWeightsReady, ObservedGeneration: m.Generation}
	if claim, sub, ok := pvcSource(m.Spec.Model.URI); ok {
		c.Status, c.Reason = metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonWeightsOnVolume
		c.Message = fmt.Sprintf("the weights are read from PersistentVolumeClaim %s at /%s", claim, sub)
		return c
	}
	var byState [fetchFailed + 1][]podFetch
	for i := range pods {
		p := &pods[i]
		if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		pf := readFetch(p)
		byState[pf.state] = append(byState[pf.state], pf)
	}
	for _, s := range byState {
		sort.Slice(s, func(i, j int) bool { return s[i].pod < s[j].pod })
	}
	switch {
	case len(byState[fetchFailed]) > 0:
		pf := byState[fetchFailed][0]
		c.Status, c.Reason = metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonWeightsFailed
		c.Message = fmt.Sprintf("fetching the weights failed in pod %s: %s", pf.pod, pf.message)
	case len(byState[fetchRunning]) > 0:
		pf := byState[fetchRunning][0]
		c.Status, c.Reason = metav1.ConditionFalse, servingv1alpha1.InferenceModelReasonWeightsFetching
		c.Message = fmt.Sprintf("pod %s is fetching the weights since %s; progress: kubectl logs -n %s %s -c %s",
			pf.pod, pf.since.UTC().Format("2006-01-02T15:04:05Z"), m.Namespace, pf.pod, containerFetch)
		if pf.lastErr != "" {
			c.Message += "; the previous attempt failed: " + pf.lastErr
		}
	case len(byState[fetchDone]) > 0:
		pf := byState[fetchDone][0]
		c.Status, c.Reason = metav1.ConditionTrue, servingv1alpha1.InferenceModelReasonWeightsFetched
		c.Message = fmt.Sprintf("pod %s: %s", pf.pod, pf.message)
	default:
		c.Status, c.Reason = metav1.ConditionUnknown, servingv1alpha1.InferenceModelReasonWeightsPending
		c.Message = "no pod has started fetching the weights yet"
	}
	c.Message = truncate(c.Message, 4096)
	return c
}

// setWeightsStatus adds WeightsReady to a computed status and, while replicas are not
// ready because the weights are not there, says so in Ready: "fetching" or "failed: 401
// for hf://org/repo" tells a person more than "0 of 1 replicas ready".
func setWeightsStatus(st *servingv1alpha1.InferenceModelStatus, c metav1.Condition) {
	meta.SetStatusCondition(&st.Conditions, c)
	ready := meta.FindStatusCondition(st.Conditions, servingv1alpha1.ConditionReady)
	if ready != nil && ready.Reason == servingv1alpha1.InferenceModelReasonReplicasNotReady && c.Status == metav1.ConditionFalse {
		ready.Reason, ready.Message = c.Reason, ready.Message+"; "+c.Message
	}
}

// modelPods lists the model's pods from the cache.
func modelPods(ctx context.Context, c ctrl.Reader, m *servingv1alpha1.InferenceModel) ([]corev1.Pod, error) {
	var pods corev1.PodList
	if err := c.List(ctx, &pods, ctrl.InNamespace(m.Namespace), ctrl.MatchingLabels(selectorLabels(m))); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	return pods.Items, nil
}

// podModel maps a model pod to its InferenceModel.
func podModel(o ctrl.Object) []types.NamespacedName {
	l := o.GetLabels()
	if l[servingv1alpha1.LabelManagedBy] != servingv1alpha1.ManagedByValue || l[servingv1alpha1.LabelInferenceModel] == "" {
		return nil
	}
	return []types.NamespacedName{{Namespace: o.GetNamespace(), Name: l[servingv1alpha1.LabelInferenceModel]}}
}

// fetchStatusChanged passes pod events that change what readFetch reads.
func fetchStatusChanged(o, n *corev1.Pod) bool {
	return readFetch(o) != readFetch(n) || (o.DeletionTimestamp == nil) != (n.DeletionTimestamp == nil)
}
