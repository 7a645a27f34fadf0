//go:build !linux

package localcluster

import "syscall"

func childSysProcAttr() *syscall.SysProcAttr { return nil }
