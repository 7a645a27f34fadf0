package controllers

import (
	"fmt"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

// Names of the probe's objects. One ServiceAccount serves every pool's DaemonSet: what a
// probe may write depends on its node, never on its pool, and a single identity lets the
// admission policy name it exactly (see probeAdmissionPolicy).
const (
	// ProbeName names the probe's ServiceAccount, ClusterRole and ClusterRoleBinding, and is
	// the app.kubernetes.io/name of its pods.
	ProbeName = "helixflow-probe"
	// ProbePolicyName names the ValidatingAdmissionPolicy and its binding that keep each
	// probe to the GPUNode of its own node.
	ProbePolicyName = "helixflow-probe-own-gpunode"
	// ProbeMetricsPort serves the probe's GPU metrics and /healthz.
	ProbeMetricsPort int32 = 9400
	// NodeNameExtra is the user-info extra the API server puts in a pod-bound service-account
	// token's identity: the node the pod runs on.
	NodeNameExtra = "authentication.kubernetes.io/node-name"

	containerProbe = "probe"
	// defaultProbeInterval is the CRD default of spec.probe.interval, for pools read before
	// defaulting (unit tests) and for older objects.
	defaultProbeInterval = time.Minute
)

// probeInterval is the pool's sampling interval.
func probeInterval(pool *servingv1alpha1.GPUPool) time.Duration {
	if i := pool.Spec.Probe.Interval; i != nil && i.Duration > 0 {
		return i.Duration
	}
	return defaultProbeInterval
}

// ProbeDaemonSetName is the name of the pool's probe DaemonSet in the manager's namespace.
func ProbeDaemonSetName(pool *servingv1alpha1.GPUPool) string { return ProbeName + "-" + pool.Name }

// probeUsername is the probe ServiceAccount's user name as the API server authenticates it.
func probeUsername(namespace string) string {
	return "system:serviceaccount:" + namespace + ":" + ProbeName
}

// probeSharedLabels go on the cluster-wide objects every pool's probe shares.
func probeSharedLabels() map[string]string {
	return map[string]string{
		servingv1alpha1.LabelManagedBy: servingv1alpha1.ManagedByValue,
		"app.kubernetes.io/name":       ProbeName,
	}
}

// probeLabels select one pool's probe pods; they never change after the DaemonSet exists.
func probeLabels(pool *servingv1alpha1.GPUPool) map[string]string {
	l := probeSharedLabels()
	l[servingv1alpha1.LabelGPUPool] = pool.Name
	return l
}

// probeDaemonSet runs `runtime probe` on each of the pool's nodes, in the manager's
// namespace. It is built without an owner reference: the reconciler sets the pool as
// controller (a namespaced dependent may have a cluster-scoped owner).
func probeDaemonSet(pool *servingv1alpha1.GPUPool, cfg Config) *appsv1.DaemonSet {
	lbls := probeLabels(pool)
	spec := corev1.PodSpec{
		ServiceAccountName: ProbeName,
		SecurityContext: &corev1.PodSecurityContext{
			RunAsNonRoot:   ptr.To(true),
			RunAsUser:      ptr.To(nonRootUID),
			RunAsGroup:     ptr.To(nonRootUID),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		Containers:  []corev1.Container{probeContainer(pool, cfg)},
		Tolerations: pool.Spec.Tolerations,
		// The probe holds no state: a short grace period lets node drains move on.
		TerminationGracePeriodSeconds: ptr.To[int64](10),
	}
	if aff := nodeAffinity(pool.Spec.NodeSelector); aff != nil {
		spec.Affinity = &corev1.Affinity{NodeAffinity: aff}
	}
	if cfg.ProbeRuntimeClassName != "" {
		spec.RuntimeClassName = ptr.To(cfg.ProbeRuntimeClassName)
	}
	return &appsv1.DaemonSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
		ObjectMeta: metav1.ObjectMeta{Name: ProbeDaemonSetName(pool), Namespace: cfg.Namespace, Labels: lbls},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: probeLabels(pool)},
			// A probe being replaced only delays one heartbeat, well inside the pool's report
			// TTL of three intervals: roll a quarter of a large pool at a time, not one node.
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{
				Type:          appsv1.RollingUpdateDaemonSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxUnavailable: ptr.To(intstr.FromString("25%"))},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: probeLabels(pool)},
				Spec:       spec,
			},
		},
	}
}

func probeContainer(pool *servingv1alpha1.GPUPool, cfg Config) corev1.Container {
	return corev1.Container{
		Name:  containerProbe,
		Image: cfg.RuntimeImage,
		Args: []string{
			"probe",
			"--node-name=$(NODE_NAME)",
			"--interval=" + probeInterval(pool).String(),
			fmt.Sprintf("--metrics-address=:%d", ProbeMetricsPort),
		},
		Env: []corev1.EnvVar{
			{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
			// The NVIDIA container runtime reads these and mounts the driver's management
			// library (libnvidia-ml) and device nodes into the container: NVML without
			// privilege, host paths or a GPU request, so the probe never takes a GPU from a model.
			{Name: "NVIDIA_VISIBLE_DEVICES", Value: "all"},
			{Name: "NVIDIA_DRIVER_CAPABILITIES", Value: "utility"},
		},
		Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: ProbeMetricsPort, Protocol: corev1.ProtocolTCP}},
		LivenessProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("metrics")}},
			// Every number set, the server's defaults included (see applyOwned).
			PeriodSeconds: 20, FailureThreshold: 3, TimeoutSeconds: 1, SuccessThreshold: 1,
		},
		// It shares the node with GPU workloads: ask for little, and cap memory so a leak
		// cannot grow into their room. No CPU limit: throttling would only delay samples.
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: *resourceMilli(10), corev1.ResourceMemory: *resourceMi(32)},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: *resourceMi(128)},
		},
		SecurityContext:          restrictedContext(),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// probeServiceAccount is the identity of every pool's probe pods.
func probeServiceAccount(namespace string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{Name: ProbeName, Namespace: namespace, Labels: probeSharedLabels()},
	}
}

// probeClusterRole lets the probe write GPUNodes; which one it may write is the admission
// policy's business, as RBAC cannot name an object after the caller's node.
func probeClusterRole() *rbacv1.ClusterRole {
	return &rbacv1.ClusterRole{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
		ObjectMeta: metav1.ObjectMeta{Name: ProbeName, Labels: probeSharedLabels()},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{servingv1alpha1.GroupVersion.Group},
			Resources: []string{"gpunodes", "gpunodes/status"},
			Verbs:     []string{"get", "list", "watch", "create", "patch", "update"},
		}},
	}
}

func probeClusterRoleBinding(namespace string) *rbacv1.ClusterRoleBinding {
	return &rbacv1.ClusterRoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: ProbeName, Labels: probeSharedLabels()},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: ProbeName},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: ProbeName, Namespace: namespace}},
	}
}

// probeAdmissionPolicy lets the probe's ServiceAccount create and update a GPUNode (and its
// status) only when the GPUNode is named after the node in the caller's token, which the
// API server puts there for pod-bound tokens and no pod can forge. A probe on a
// compromised node can then misreport that node only. Requests from anyone else (the
// manager, people) do not match and are not evaluated.
func probeAdmissionPolicy(namespace string) *admissionregistrationv1.ValidatingAdmissionPolicy {
	extra := fmt.Sprintf("request.userInfo.extra[%q]", NodeNameExtra)
	return &admissionregistrationv1.ValidatingAdmissionPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingAdmissionPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: ProbePolicyName, Labels: probeSharedLabels()},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			// A policy that cannot be evaluated must not open the door.
			FailurePolicy: ptr.To(admissionregistrationv1.Fail),
			MatchConstraints: &admissionregistrationv1.MatchResources{
				ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
					RuleWithOperations: admissionregistrationv1.RuleWithOperations{
						Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create, admissionregistrationv1.Update},
						Rule: admissionregistrationv1.Rule{
							APIGroups:   []string{servingv1alpha1.GroupVersion.Group},
							APIVersions: []string{"*"},
							Resources:   []string{"gpunodes", "gpunodes/status"},
						},
					},
				}},
			},
			MatchConditions: []admissionregistrationv1.MatchCondition{{
				Name:       "probe-service-account",
				Expression: fmt.Sprintf("request.userInfo.username == %q", probeUsername(namespace)),
			}},
			Variables: []admissionregistrationv1.Variable{{
				Name: "nodeName",
				Expression: fmt.Sprintf("has(request.userInfo.extra) && %q in request.userInfo.extra && size(%s) > 0 ? %s[0] : ''",
					NodeNameExtra, extra, extra),
			}},
			Validations: []admissionregistrationv1.Validation{{
				Expression: "variables.nodeName != '' && object.metadata.name == variables.nodeName",
				Message:    "the probe may write only the GPUNode named after the node in its service account token (" + NodeNameExtra + ")",
				MessageExpression: fmt.Sprintf(`variables.nodeName == '' ? 'the probe service account token names no node (%s): only a probe pod bound to a node may write a GPUNode' : 'the probe on node ' + variables.nodeName + ' may write only GPUNode ' + variables.nodeName + ', not ' + object.metadata.name`,
					NodeNameExtra),
				Reason: ptr.To(metav1.StatusReasonForbidden),
			}},
		},
	}
}

func probeAdmissionPolicyBinding() *admissionregistrationv1.ValidatingAdmissionPolicyBinding {
	return &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingAdmissionPolicyBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: ProbePolicyName, Labels: probeSharedLabels()},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        ProbePolicyName,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
		},
	}
}

// probeSharedObjects are the cluster-wide objects every pool's probe shares, in the order
// they are applied: the admission policy and its binding exist before RBAC lets the probe
// write, and the reconciler applies the DaemonSet only after all of them, so no probe pod
// starts with write access and no per-node restriction.
func probeSharedObjects(namespace string) []client.Object {
	return []client.Object{
		probeAdmissionPolicy(namespace),
		probeAdmissionPolicyBinding(),
		probeServiceAccount(namespace),
		probeClusterRole(),
		probeClusterRoleBinding(namespace),
	}
}
