// This machine runs Node 20; the AWS SDK's notice about Node 22 (the Lambda runtime's version) is noise in test output.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
