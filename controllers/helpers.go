package controllers

import (
	"sort"

	"k8s.io/apimachinery/pkg/api/resource"
)

func resourceQuantity(n int64) *resource.Quantity { return resource.NewQuantity(n, resource.DecimalSI) }
func resourceMilli(n int64) *resource.Quantity {
	return resource.NewMilliQuantity(n, resource.DecimalSI)
}
func resourceMi(n int64) *resource.Quantity { return resource.NewQuantity(n<<20, resource.BinarySI) }

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
