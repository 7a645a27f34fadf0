package controllers

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	servingv1alpha1 "github.com/helixflow/helixflow/api/v1alpha1"
)

const probeTestNamespace = "hf-system"

func probeTestConfig() Config {
	c := builderTestConfig
	c.Namespace = probeTestNamespace
	return c
}

func TestProbeDaemonSet(t *testing.T) {
	toleration := corev1.Toleration{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}
	pool := makePool("h100").NodeLabel("pool", "h100").NodeExpression("zone", metav1.LabelSelectorOpIn, "a", "b").Toleration(toleration).Obj()
	pool.Spec.Probe.Interval = &metav1.Duration{Duration: 30 * time.Second}
	ds := probeDaemonSet(pool, probeTestConfig())

	wantLabels := map[string]string{
		"app.kubernetes.io/managed-by":  "helixflow",
		"serving.helixflow.io/gpu-pool": "h100",
		"app.kubernetes.io/name":        "helixflow-probe",
	}
	if ds.Name != "helixflow-probe-h100" || ds.Namespace != probeTestNamespace {
		t.Errorf("DaemonSet %s/%s, want %s/helixflow-probe-h100", ds.Namespace, ds.Name, probeTestNamespace)
	}
	if ds.APIVersion != "apps/v1" || ds.Kind != "DaemonSet" {
		t.Errorf("TypeMeta %+v: server-side apply needs it", ds.TypeMeta)
	}
	if len(ds.OwnerReferences) != 0 {
		t.Errorf("builder set owner references %+v; the reconciler sets the pool", ds.OwnerReferences)
	}
	for what, got := range map[string]map[string]string{
		"labels": ds.Labels, "selector": ds.Spec.Selector.MatchLabels, "pod labels": ds.Spec.Template.Labels,
	} {
		if diff := cmp.Diff(wantLabels, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", what, diff)
		}
	}

	spec := ds.Spec.Template.Spec
	if spec.ServiceAccountName != ProbeName {
		t.Errorf("serviceAccountName %q", spec.ServiceAccountName)
	}
	if spec.RuntimeClassName != nil {
		t.Errorf("runtimeClassName %q without a configured one", *spec.RuntimeClassName)
	}
	if diff := cmp.Diff([]corev1.Toleration{toleration}, spec.Tolerations); diff != "" {
		t.Errorf("tolerations (-want +got):\n%s", diff)
	}
	wantAffinity := &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
			{Key: "pool", Operator: corev1.NodeSelectorOpIn, Values: []string{"h100"}},
			{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"a", "b"}},
		}}},
	}}}
	if diff := cmp.Diff(wantAffinity, spec.Affinity); diff != "" {
		t.Errorf("affinity (-want +got):\n%s", diff)
	}

	if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
		t.Fatalf("%d containers, %d init containers; want one probe container", len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]
	if c.Image != builderTestConfig.RuntimeImage {
		t.Errorf("image %q, want the runtime image", c.Image)
	}
	if diff := cmp.Diff([]string{"probe", "--node-name=$(NODE_NAME)", "--interval=30s", "--metrics-address=:9400"}, c.Args); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	wantEnv := []corev1.EnvVar{
		{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		{Name: "NVIDIA_VISIBLE_DEVICES", Value: "all"},
		{Name: "NVIDIA_DRIVER_CAPABILITIES", Value: "utility"},
	}
	if diff := cmp.Diff(wantEnv, c.Env); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]corev1.ContainerPort{{Name: "metrics", ContainerPort: 9400, Protocol: corev1.ProtocolTCP}}, c.Ports); diff != "" {
		t.Errorf("ports (-want +got):\n%s", diff)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port != intstr.FromString("metrics") {
		t.Errorf("liveness probe %+v, want GET /healthz on the metrics port", p)
	}
	// The probe must never hold a GPU (it would take it from a model) and must ask for little.
	for name := range c.Resources.Requests {
		if name != corev1.ResourceCPU && name != corev1.ResourceMemory {
			t.Errorf("probe requests %s", name)
		}
	}
	if cpu := c.Resources.Requests.Cpu(); cpu.IsZero() || cpu.MilliValue() > 100 {
		t.Errorf("cpu request %s, want a small non-zero request", cpu)
	}
	if mem := c.Resources.Requests.Memory(); mem.IsZero() || mem.Value() > 128<<20 {
		t.Errorf("memory request %s, want a small non-zero request", mem)
	}
	if len(c.Resources.Limits) != 1 || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("limits %v, want a memory limit only", c.Resources.Limits)
	}
}

func TestProbeDaemonSetDefaultsAndRuntimeClass(t *testing.T) {
	cfg := probeTestConfig()
	cfg.ProbeRuntimeClassName = "nvidia"
	// No interval (as before CRD defaulting) and no node selector: the pool is every node.
	ds := probeDaemonSet(makePool("all").Obj(), cfg)
	spec := ds.Spec.Template.Spec
	if got := ptr.Deref(spec.RuntimeClassName, ""); got != "nvidia" {
		t.Errorf("runtimeClassName %q, want nvidia", got)
	}
	if spec.Affinity != nil {
		t.Errorf("affinity %+v for an empty nodeSelector", spec.Affinity)
	}
	if got := spec.Containers[0].Args; !slices.Contains(got, "--interval=1m0s") {
		t.Errorf("args %q, want the 60s default interval", got)
	}
}

func TestProbePodSecurityRestricted(t *testing.T) {
	evaluate := restrictedEvaluator(t)
	build := func() corev1.PodTemplateSpec {
		cfg := probeTestConfig()
		cfg.ProbeRuntimeClassName = "nvidia"
		pool := makePool("h100").NodeLabel("pool", "h100").
			Toleration(corev1.Toleration{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists}).Obj()
		return probeDaemonSet(pool, cfg).Spec.Template
	}

	tmpl := build()
	if res := evaluate(&tmpl); !res.Allowed {
		t.Errorf("probe pod violates PSS restricted: %s", res.ForbiddenDetail())
	}
	for _, c := range slices.Concat(tmpl.Spec.InitContainers, tmpl.Spec.Containers) {
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("container %s has no securityContext", c.Name)
			continue
		}
		if !ptr.Deref(sc.RunAsNonRoot, false) || ptr.Deref(sc.AllowPrivilegeEscalation, true) || ptr.Deref(sc.Privileged, false) ||
			sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
			sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("container %s securityContext is not restricted: %+v", c.Name, sc)
		}
	}
	if s := tmpl.Spec; s.HostNetwork || s.HostPID || s.HostIPC || len(s.Volumes) != 0 {
		t.Errorf("probe pod uses host namespaces or volumes: hostNetwork=%v hostPID=%v hostIPC=%v volumes=%v", s.HostNetwork, s.HostPID, s.HostIPC, s.Volumes)
	}

	// Controls: what a GPU exporter is often given instead (privilege, the driver through a
	// hostPath) must be caught by the same evaluator, or passing above proves nothing.
	controls := map[string]func(*corev1.PodSpec){
		"privileged": func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext.Privileged = ptr.To(true)
		},
		"driver through a hostPath": func(s *corev1.PodSpec) {
			s.Volumes = append(s.Volumes, corev1.Volume{Name: "driver", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/nvidia/driver"}}})
		},
		"SYS_ADMIN": func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext.Capabilities.Add = []corev1.Capability{"SYS_ADMIN"}
		},
		"host PID namespace": func(s *corev1.PodSpec) { s.HostPID = true },
	}
	for desc, mutate := range controls {
		t.Run("control: "+desc, func(t *testing.T) {
			tmpl := build()
			mutate(&tmpl.Spec)
			if res := evaluate(&tmpl); res.Allowed {
				t.Error("the restricted evaluator allowed a violating pod")
			}
		})
	}
}

func TestProbeRBAC(t *testing.T) {
	role := probeClusterRole()
	wantRules := []rbacv1.PolicyRule{{
		APIGroups: []string{"serving.helixflow.io"},
		Resources: []string{"gpunodes", "gpunodes/status"},
		Verbs:     []string{"get", "list", "watch", "create", "patch", "update"},
	}}
	if diff := cmp.Diff(wantRules, role.Rules); diff != "" {
		t.Errorf("ClusterRole rules (-want +got):\n%s", diff)
	}
	for _, r := range role.Rules {
		if slices.Contains(r.Verbs, "delete") || slices.Contains(r.Verbs, "*") || slices.Contains(r.Resources, "*") {
			t.Errorf("probe rule too broad: %+v", r)
		}
	}
	b := probeClusterRoleBinding(probeTestNamespace)
	if b.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name}) {
		t.Errorf("roleRef %+v", b.RoleRef)
	}
	if diff := cmp.Diff([]rbacv1.Subject{{Kind: "ServiceAccount", Name: "helixflow-probe", Namespace: probeTestNamespace}}, b.Subjects); diff != "" {
		t.Errorf("subjects (-want +got):\n%s", diff)
	}
	sa := probeServiceAccount(probeTestNamespace)
	if sa.Name != "helixflow-probe" || sa.Namespace != probeTestNamespace {
		t.Errorf("ServiceAccount %s/%s", sa.Namespace, sa.Name)
	}
}

func TestProbeAdmissionPolicy(t *testing.T) {
	p := probeAdmissionPolicy(probeTestNamespace)
	if p.Name != ProbePolicyName {
		t.Errorf("name %q", p.Name)
	}
	if ptr.Deref(p.Spec.FailurePolicy, "") != admissionregistrationv1.Fail {
		t.Errorf("failurePolicy %v, want Fail", p.Spec.FailurePolicy)
	}
	wantRules := []admissionregistrationv1.NamedRuleWithOperations{{RuleWithOperations: admissionregistrationv1.RuleWithOperations{
		Operations: []admissionregistrationv1.OperationType{"CREATE", "UPDATE"},
		Rule: admissionregistrationv1.Rule{
			APIGroups: []string{"serving.helixflow.io"}, APIVersions: []string{"*"}, Resources: []string{"gpunodes", "gpunodes/status"},
		},
	}}}
	if diff := cmp.Diff(wantRules, p.Spec.MatchConstraints.ResourceRules); diff != "" {
		t.Errorf("resource rules (-want +got):\n%s", diff)
	}
	// Only the probe's own identity in the manager's namespace is evaluated.
	if len(p.Spec.MatchConditions) != 1 ||
		p.Spec.MatchConditions[0].Expression != `request.userInfo.username == "system:serviceaccount:hf-system:helixflow-probe"` {
		t.Errorf("matchConditions %+v", p.Spec.MatchConditions)
	}
	if len(p.Spec.Validations) != 1 {
		t.Fatalf("%d validations", len(p.Spec.Validations))
	}
	v := p.Spec.Validations[0]
	if ptr.Deref(v.Reason, "") != metav1.StatusReasonForbidden {
		t.Errorf("reason %v, want Forbidden", v.Reason)
	}
	all := v.Expression + " " + p.Spec.Variables[0].Expression
	for _, want := range []string{"has(request.userInfo.extra)", `request.userInfo.extra["authentication.kubernetes.io/node-name"][0]`, "object.metadata.name == variables.nodeName"} {
		if !strings.Contains(all, want) {
			t.Errorf("expressions %q lack %q", all, want)
		}
	}

	b := probeAdmissionPolicyBinding()
	if b.Name != ProbePolicyName || b.Spec.PolicyName != ProbePolicyName ||
		!slices.Equal(b.Spec.ValidationActions, []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}) {
		t.Errorf("binding %+v", b)
	}
}

// The admission policy must exist before RBAC grants the probe any write.
func TestProbeSharedObjectsOrder(t *testing.T) {
	var kinds []string
	for _, o := range probeSharedObjects(probeTestNamespace) {
		kinds = append(kinds, o.GetObjectKind().GroupVersionKind().Kind)
		if len(o.GetOwnerReferences()) != 0 {
			t.Errorf("%T has owner references: shared objects belong to no one pool", o)
		}
		if o.GetLabels()[servingv1alpha1.LabelManagedBy] != servingv1alpha1.ManagedByValue {
			t.Errorf("%T lacks the managed-by label", o)
		}
	}
	want := []string{"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
	if diff := cmp.Diff(want, kinds); diff != "" {
		t.Errorf("apply order (-want +got):\n%s", diff)
	}
}
