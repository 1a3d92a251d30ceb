// The flat index of this workgroup. A dispatch of more workgroups than the device allows in
// x is spread over y (nexvk/device/manager.py, Device.pipeline); the spare ids at the end map
// past the work, and every kernel's bounds checks make them exit.
#ifndef GROUP_ID_GLSL
#define GROUP_ID_GLSL
#define GROUP_ID (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x)
#endif
